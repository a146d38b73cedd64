//! A bounds-checked big-endian reader: every read checks the remaining length first and
//! returns error.Short instead of reading past the end (STYLE.md 7, quic-go sni.go).
const layout = @import("layout.zig");
const Error = layout.Error;

pub const Reader = struct {
    bytes: []const u8,
    index: usize = 0,

    pub fn init(bytes: []const u8) Reader {
        return .{ .bytes = bytes, .index = 0 };
    }

    pub fn remaining(self: *const Reader) usize {
        return self.bytes.len - self.index;
    }

    pub fn read_u8(self: *Reader) Error!u8 {
        if (self.remaining() < 1) return error.Short;
        const value = self.bytes[self.index];
        self.index += 1;
        return value;
    }

    pub fn read_u16(self: *Reader) Error!u16 {
        if (self.remaining() < 2) return error.Short;
        const b = self.bytes[self.index..][0..2];
        self.index += 2;
        return (@as(u16, b[0]) << 8) | b[1];
    }

    pub fn read_u24(self: *Reader) Error!u32 {
        if (self.remaining() < 3) return error.Short;
        const b = self.bytes[self.index..][0..3];
        self.index += 3;
        return (@as(u32, b[0]) << 16) | (@as(u32, b[1]) << 8) | b[2];
    }

    pub fn read_u32(self: *Reader) Error!u32 {
        if (self.remaining() < 4) return error.Short;
        const b = self.bytes[self.index..][0..4];
        self.index += 4;
        return (@as(u32, b[0]) << 24) | (@as(u32, b[1]) << 16) | (@as(u32, b[2]) << 8) | b[3];
    }

    pub fn read_slice(self: *Reader, count: usize) Error![]const u8 {
        if (self.remaining() < count) return error.Short;
        const slice = self.bytes[self.index..][0..count];
        self.index += count;
        return slice;
    }

    pub fn skip(self: *Reader, count: usize) Error!void {
        if (self.remaining() < count) return error.Short;
        self.index += count;
    }

    /// Variable-length integer: the two high bits of the first byte give its length in
    /// bytes, 1, 2, 4 or 8 (RFC 9000 16).
    pub fn read_varint(self: *Reader) Error!u64 {
        if (self.remaining() < 1) return error.Short;
        const first = self.bytes[self.index];
        const count = @as(usize, 1) << @intCast(first >> 6);
        if (self.remaining() < count) return error.Short;
        var value: u64 = first & 0x3f;
        for (self.bytes[self.index + 1 ..][0 .. count - 1]) |b| value = (value << 8) | b;
        self.index += count;
        return value;
    }
};

/// ASCII-only lowercase: DNS and SNI names compare case-insensitively for A-Z only
/// (RFC 4343 3).
pub fn lower_ascii(b: u8) u8 {
    return if (b >= 'A' and b <= 'Z') b + 32 else b;
}
