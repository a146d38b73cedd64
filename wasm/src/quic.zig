//! QUIC packet headers (RFC 8999 5, RFC 9000 17) and client Initial processing: removal of
//! Initial packet protection (RFC 9001 5.2-5.4; RFC 9369 3.3 for v2), CRYPTO frame
//! reassembly across packets (RFC 9000 19.6) in a few fixed contexts keyed by the client's
//! Destination Connection ID, and the ClientHello's SNI and ALPN (tls.zig).
const std = @import("std");
const layout = @import("layout.zig");
const bytes = @import("bytes.zig");
const tls = @import("tls.zig");
const Reader = bytes.Reader;
const Error = layout.Error;
const Result = layout.Result;
const QuicType = layout.QuicType;

const Aes128 = std.crypto.core.aes.Aes128;
const Aes128Gcm = std.crypto.aead.aes_gcm.Aes128Gcm;
const HkdfSha256 = std.crypto.kdf.hkdf.HkdfSha256;

pub const version_1: u32 = 0x00000001;
pub const version_2: u32 = 0x6b3343cf;

/// RFC 9000 17.2: in v1 (and v2, RFC 9369 3) connection IDs are at most 20 bytes; other
/// versions may use up to 255 (RFC 8999 5.1).
const cid_bytes_max = 20;

pub const Header = struct {
    version: u32 = 0,
    long: bool = false,
    packet_type: QuicType = .one_rtt,
    dcid_index: usize = 0,
    dcid_bytes: usize = 0,
    scid_index: usize = 0,
    scid_bytes: usize = 0,
    token_index: usize = 0,
    token_bytes: usize = 0,
    /// Long header: index of the (protected) packet number, right after Length.
    payload_index: usize = 0,
    packet_bytes: usize = 0,
    length: u64 = 0,
};

/// Long-header type bits to v1 numbering. v2 rotates them: Initial 0b01, 0-RTT 0b10,
/// Handshake 0b11, Retry 0b00 (RFC 9369 3.2).
fn long_type(version: u32, bits: u8) QuicType {
    const v1_types = [4]QuicType{ .initial, .zero_rtt, .handshake, .retry };
    const v2_types = [4]QuicType{ .retry, .initial, .zero_rtt, .handshake };
    return if (version == version_2) v2_types[bits] else v1_types[bits];
}

/// Parses one packet's header at the start of `datagram`. Short headers carry no DCID
/// length, so the caller passes the length it chose for its connection IDs.
/// Unknown versions: the invariant fields are filled (RFC 8999 5.1) and Unsupported
/// returned.
pub fn parse_header(datagram: []const u8, short_dcid_bytes: usize, header: *Header) Error!void {
    var reader = Reader.init(datagram);
    const first = try reader.read_u8();
    if (first & 0x80 == 0) {
        // RFC 9000 17.3.1: 1-RTT packet; the DCID follows the first byte.
        if (short_dcid_bytes > cid_bytes_max) return error.Malformed;
        header.long = false;
        header.packet_type = .one_rtt;
        header.dcid_index = 1;
        header.dcid_bytes = short_dcid_bytes;
        try reader.skip(short_dcid_bytes);
        header.payload_index = reader.index;
        header.packet_bytes = datagram.len;
        return;
    }
    header.long = true;
    header.version = try reader.read_u32();
    const known = header.version == version_1 or header.version == version_2;
    const dcid_limit: usize = if (known) cid_bytes_max else 255;
    header.dcid_bytes = try reader.read_u8();
    if (header.dcid_bytes > dcid_limit) return error.Malformed;
    header.dcid_index = reader.index;
    try reader.skip(header.dcid_bytes);
    header.scid_bytes = try reader.read_u8();
    if (header.scid_bytes > dcid_limit) return error.Malformed;
    header.scid_index = reader.index;
    try reader.skip(header.scid_bytes);
    if (header.version == 0) {
        // RFC 8999 6: Version Negotiation; the rest is a list of 32-bit versions.
        header.packet_type = .version_negotiation;
        header.payload_index = reader.index;
        header.packet_bytes = datagram.len;
        if (reader.remaining() % 4 != 0) return error.Malformed;
        return;
    }
    if (!known) return error.Unsupported;
    // RFC 9000 17.2: the Fixed Bit is 1 (grease_quic_bit, RFC 9287, is not assumed).
    if (first & 0x40 == 0) return error.Malformed;
    header.packet_type = long_type(header.version, (first >> 4) & 0x03);
    switch (header.packet_type) {
        .retry => {
            // RFC 9000 17.2.5: Retry Token then a 16-byte Retry Integrity Tag.
            if (reader.remaining() < 16) return error.Short;
            header.token_index = reader.index;
            header.token_bytes = reader.remaining() - 16;
            header.payload_index = datagram.len - 16;
            header.packet_bytes = datagram.len;
            return;
        },
        .initial => {
            // RFC 9000 17.2.2: Token Length (varint), Token.
            const token_bytes = try reader.read_varint();
            if (token_bytes > reader.remaining()) return error.Short;
            header.token_index = reader.index;
            header.token_bytes = @intCast(token_bytes);
            reader.index += header.token_bytes;
        },
        else => {},
    }
    // RFC 9000 17.2: Length covers the packet number and the payload.
    const length = try reader.read_varint();
    header.length = length;
    header.payload_index = reader.index;
    if (length > reader.remaining()) return error.Short;
    header.packet_bytes = reader.index + @as(usize, @intCast(length));
}

pub fn write_header(header: *const Header, base_offset: u32, result: *Result) void {
    result.field[layout.quic_version] = header.version;
    result.field[layout.quic_long] = @intFromBool(header.long);
    result.field[layout.quic_type] = @intFromEnum(header.packet_type);
    result.field[layout.quic_dcid_offset] = base_offset + @as(u32, @intCast(header.dcid_index));
    result.field[layout.quic_dcid_bytes] = @intCast(header.dcid_bytes);
    result.field[layout.quic_scid_offset] = base_offset + @as(u32, @intCast(header.scid_index));
    result.field[layout.quic_scid_bytes] = @intCast(header.scid_bytes);
    result.field[layout.quic_token_offset] = base_offset +
        @as(u32, @intCast(header.token_index));
    result.field[layout.quic_token_bytes] = @intCast(header.token_bytes);
    result.field[layout.quic_payload_offset] = base_offset +
        @as(u32, @intCast(header.payload_index));
    result.field[layout.quic_packet_bytes] = @intCast(header.packet_bytes);
    // Length is a 62-bit varint; a datagram can only hold one up to 2^16, so clamp.
    result.field[layout.quic_length] = @intCast(@min(header.length, std.math.maxInt(u32)));
}

/// Initial keys for one direction (RFC 9001 5.1).
pub const Keys = struct {
    key: [16]u8,
    iv: [12]u8,
    hp: [16]u8,
};

/// RFC 9001 5.2 and RFC 9369 3.3.1.
const salt_v1 = [20]u8{
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
    0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
};
const salt_v2 = [20]u8{
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
    0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
};

/// HKDF-Expand-Label (RFC 8446 7.1) with an empty context, as QUIC uses it (RFC 9001 5.1).
fn expand_label(out: []u8, secret: [32]u8, comptime label: []const u8) void {
    const full_label = "tls13 " ++ label;
    var info: [2 + 1 + full_label.len + 1]u8 = undefined;
    info[0] = 0;
    info[1] = @intCast(out.len);
    info[2] = full_label.len;
    @memcpy(info[3..][0..full_label.len], full_label);
    info[3 + full_label.len] = 0;
    HkdfSha256.expand(out, &info, secret);
}

/// Client Initial keys from the client's first Destination Connection ID (RFC 9001 5.2).
/// v2 changes the salt and the "quic key"/"quic iv"/"quic hp" labels (RFC 9369 3.3).
pub fn derive_client_keys(version: u32, dcid: []const u8, keys: *Keys) void {
    const salt: []const u8 = if (version == version_2) &salt_v2 else &salt_v1;
    const initial_secret = HkdfSha256.extract(salt, dcid);
    var client_secret: [32]u8 = undefined;
    expand_label(&client_secret, initial_secret, "client in");
    if (version == version_2) {
        expand_label(&keys.key, client_secret, "quicv2 key");
        expand_label(&keys.iv, client_secret, "quicv2 iv");
        expand_label(&keys.hp, client_secret, "quicv2 hp");
    } else {
        expand_label(&keys.key, client_secret, "quic key");
        expand_label(&keys.iv, client_secret, "quic iv");
        expand_label(&keys.hp, client_secret, "quic hp");
    }
}

/// Reassembly contexts: a small fixed table keyed by (version, client DCID). The least
/// recently used one is reused when a new connection arrives (the count is a bound, not a
/// guarantee: a flood of new DCIDs evicts older pending hellos, which then report short).
pub const context_count = 8;
/// CRYPTO bytes buffered per context: the ClientHello bound from tls.zig.
const crypto_bytes_max = tls.hello_bytes_max;

const Context = struct {
    used: bool = false,
    version: u32 = 0,
    dcid_bytes: usize = 0,
    dcid: [cid_bytes_max]u8 = undefined,
    last_use_tick: u64 = 0,
    keys: Keys = undefined,
    packets_count: u32 = 0,
    /// Invariant: every byte below contiguous_bytes has been received (its bit is set).
    contiguous_bytes: usize = 0,
    received: [crypto_bytes_max / 8]u8 = undefined,
    crypto: [crypto_bytes_max]u8 = undefined,

    fn reset(self: *Context, version: u32, dcid: []const u8, keys: *const Keys) void {
        self.used = true;
        self.version = version;
        self.dcid_bytes = dcid.len;
        @memcpy(self.dcid[0..dcid.len], dcid);
        self.keys = keys.*;
        self.packets_count = 0;
        self.contiguous_bytes = 0;
        @memset(&self.received, 0);
    }

    fn matches(self: *const Context, version: u32, dcid: []const u8) bool {
        return self.used and self.version == version and self.dcid_bytes == dcid.len and
            std.mem.eql(u8, self.dcid[0..self.dcid_bytes], dcid);
    }

    /// Stores CRYPTO data at stream offset `offset`. Data past the bound cannot belong to a
    /// ClientHello we could hold, so it is unsupported rather than silently dropped.
    fn insert(self: *Context, offset: u64, data: []const u8) Error!void {
        if (offset > crypto_bytes_max or data.len > crypto_bytes_max - offset) {
            return error.Unsupported;
        }
        const start: usize = @intCast(offset);
        @memcpy(self.crypto[start..][0..data.len], data);
        for (start..start + data.len) |i| self.received[i >> 3] |= @as(u8, 1) << @intCast(i & 7);
        while (self.contiguous_bytes < crypto_bytes_max) {
            const i = self.contiguous_bytes;
            if (self.received[i >> 3] & (@as(u8, 1) << @intCast(i & 7)) == 0) break;
            self.contiguous_bytes += 1;
        }
    }
};

// Left undefined so it lands in .bss, not as 150 KiB of data in the module; reset_contexts
// runs before first use.
var contexts: [context_count]Context = undefined;
var contexts_ready = false;
var tick: u64 = 0;

pub fn reset_contexts() void {
    for (&contexts) |*context| context.* = .{};
    contexts_ready = true;
}

fn find_context(version: u32, dcid: []const u8) ?usize {
    for (&contexts, 0..) |*context, i| if (context.matches(version, dcid)) return i;
    return null;
}

fn claim_context() usize {
    var oldest: usize = 0;
    for (&contexts, 0..) |*context, i| {
        if (!context.used) return i;
        if (context.last_use_tick < contexts[oldest].last_use_tick) oldest = i;
    }
    return oldest;
}

/// Scratch for one packet: the unprotected header (associated data) and the plaintext.
/// Client Initials fill a datagram of at least 1200 bytes (RFC 9000 14.1); jumbo paths
/// allow more, and 16 KiB covers any MTU in use. Larger ones are unsupported.
const header_scratch_bytes_max = 4096;
const plain_scratch_bytes_max = 16 * 1024;
pub var header_scratch: [header_scratch_bytes_max]u8 = undefined;
pub var plain_scratch: [plain_scratch_bytes_max]u8 = undefined;

/// RFC 9001 5.3: AES-GCM's tag is 16 bytes; 5.4.2: the sample is 16 bytes taken 4 bytes
/// after the start of the packet number.
const tag_bytes = 16;
const sample_bytes = 16;
const sample_skip_bytes = 4;
/// Bound on coalesced packets walked in one datagram (RFC 9000 12.2): Initial, 0-RTT,
/// Handshake and one more is the most a client sends.
const coalesced_count_max = 4;

/// Parses a datagram from a client: every coalesced v1/v2 Initial packet in it is
/// decrypted and its CRYPTO frames added to the connection's context. Returns ok once the
/// whole ClientHello is present (SNI/ALPN written), short while more Initials are needed.
pub fn parse_initial(
    datagram: []const u8,
    base_offset: u32,
    result: *Result,
    text: *layout.Text,
) Error!void {
    if (!contexts_ready) reset_contexts();
    var header = Header{};
    try parse_header(datagram, 0, &header);
    write_header(&header, base_offset, result);
    if (!header.long or header.packet_type != .initial) return error.Unsupported;

    var context_index: ?usize = null;
    var index: usize = 0;
    var packet_count: usize = 0;
    while (packet_count < coalesced_count_max and index < datagram.len) : (packet_count += 1) {
        const packet = datagram[index..];
        if (packet_count > 0) {
            // Later coalesced packets that are not Initials (0-RTT) are not ours to open.
            header = Header{};
            parse_header(packet, 0, &header) catch break;
            if (!header.long or header.packet_type != .initial) break;
        }
        const found = try open_initial(packet[0..header.packet_bytes], &header, result);
        context_index = found;
        index += header.packet_bytes;
    }
    const context = &contexts[context_index.?];
    result.field[layout.initial_crypto_contiguous_bytes] = @intCast(context.contiguous_bytes);
    result.field[layout.initial_context_index] = @intCast(context_index.?);
    result.field[layout.initial_packets_count] = context.packets_count;

    // RFC 9001 4.1.3 / RFC 8446 4: the client's Initial CRYPTO stream starts with the
    // ClientHello handshake message.
    const crypto = context.crypto[0..context.contiguous_bytes];
    if (crypto.len < 1) return error.Short;
    if (crypto[0] != 1) return error.Unsupported;
    if (crypto.len < tls.handshake_header_bytes) return error.Short;
    const hello_bytes = tls.handshake_header_bytes +
        ((@as(usize, crypto[1]) << 16) | (@as(usize, crypto[2]) << 8) | crypto[3]);
    result.field[layout.hello_bytes] = @intCast(hello_bytes);
    if (hello_bytes > crypto_bytes_max) return error.Unsupported;
    if (crypto.len < hello_bytes) return error.Short;
    try tls.parse_client_hello(crypto[0..hello_bytes], result, text);
}

/// Removes header and packet protection from one Initial packet and feeds its frames to
/// its context. Returns the context index. A packet that fails authentication changes no
/// context (a forged or mangled DCID cannot evict a real connection).
fn open_initial(packet: []const u8, header: *const Header, result: *Result) Error!usize {
    const dcid = packet[header.dcid_index..][0..header.dcid_bytes];
    var keys: Keys = undefined;
    const cached = find_context(header.version, dcid);
    if (cached) |i| keys = contexts[i].keys else derive_client_keys(header.version, dcid, &keys);

    // RFC 9001 5.4.2: sample 16 bytes starting 4 bytes after the packet number's start.
    const pn_index = header.payload_index;
    if (packet.len < pn_index + sample_skip_bytes + sample_bytes) return error.Malformed;
    const sample = packet[pn_index + sample_skip_bytes ..][0..sample_bytes];
    var mask: [16]u8 = undefined;
    Aes128.initEnc(keys.hp).encrypt(&mask, sample);
    // RFC 9001 5.4.1: long headers mask the low 4 bits of the first byte.
    const first = packet[0] ^ (mask[0] & 0x0f);
    const pn_bytes: usize = (first & 0x03) + 1;
    const header_bytes = pn_index + pn_bytes;
    if (header_bytes > header_scratch_bytes_max) return error.Unsupported;
    if (packet.len < header_bytes + tag_bytes) return error.Malformed;
    const ad = header_scratch[0..header_bytes];
    @memcpy(ad, packet[0..header_bytes]);
    ad[0] = first;
    var packet_number: u64 = 0;
    for (0..pn_bytes) |i| {
        ad[pn_index + i] ^= mask[1 + i];
        packet_number = (packet_number << 8) | ad[pn_index + i];
    }
    const cipher = packet[header_bytes .. packet.len - tag_bytes];
    if (cipher.len > plain_scratch_bytes_max) return error.Unsupported;
    const plain = plain_scratch[0..cipher.len];
    // RFC 9001 5.3: nonce = IV xor packet number (left-padded to the IV's length). The
    // first Initials number from 0, so the truncated number is the full one (RFC 9000 A.3
    // with no packet received yet).
    var nonce = keys.iv;
    for (0..8) |i| nonce[11 - i] ^= @truncate(packet_number >> @intCast(8 * i));
    const tag = packet[packet.len - tag_bytes ..][0..tag_bytes].*;
    Aes128Gcm.decrypt(plain, cipher, tag, ad, nonce, keys.key) catch return error.Malformed;
    // RFC 9000 17.2: reserved bits must be 0 once protection is removed.
    if (first & 0x0c != 0) return error.Malformed;
    result.field[layout.initial_packet_number] = @truncate(packet_number);
    result.field[layout.initial_header_bytes] = @intCast(header_bytes);
    result.field[layout.initial_plain_bytes] = @intCast(plain.len);

    const context_index = cached orelse claim_context();
    const context = &contexts[context_index];
    if (cached == null) context.reset(header.version, dcid, &keys);
    tick += 1;
    context.last_use_tick = tick;
    context.packets_count += 1;
    try read_frames(plain, context);
    return context_index;
}

/// RFC 9000 12.4 (Table 3): an Initial carries only PADDING, PING, ACK, CRYPTO and
/// CONNECTION_CLOSE (0x1c); anything else is a PROTOCOL_VIOLATION.
fn read_frames(plain: []const u8, context: *Context) Error!void {
    // RFC 9000 12.4: a packet carries at least one frame.
    if (plain.len == 0) return error.Malformed;
    var reader = Reader.init(plain);
    // Every frame takes at least one byte, so this ends within plain.len passes.
    while (reader.remaining() > 0) {
        const frame_type = reader.read_varint() catch return error.Malformed;
        switch (frame_type) {
            0x00 => {
                // PADDING runs are long (to 1200 bytes); skip them in one step.
                while (reader.remaining() > 0 and plain[reader.index] == 0) reader.index += 1;
            },
            0x01 => {},
            0x02, 0x03 => read_ack(&reader, frame_type == 0x03) catch return error.Malformed,
            0x06 => {
                const offset = reader.read_varint() catch return error.Malformed;
                const length = reader.read_varint() catch return error.Malformed;
                if (length > reader.remaining()) return error.Malformed;
                const data = reader.read_slice(@intCast(length)) catch return error.Malformed;
                try context.insert(offset, data);
            },
            0x1c => {
                _ = reader.read_varint() catch return error.Malformed;
                _ = reader.read_varint() catch return error.Malformed;
                const reason_bytes = reader.read_varint() catch return error.Malformed;
                if (reason_bytes > reader.remaining()) return error.Malformed;
                reader.index += @intCast(reason_bytes);
            },
            else => return error.Malformed,
        }
    }
}

/// RFC 9000 19.3: Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range, then
/// Range Count (Gap, ACK Range Length) pairs, then ECN counts for type 0x03.
fn read_ack(reader: *Reader, ecn: bool) Error!void {
    _ = try reader.read_varint();
    _ = try reader.read_varint();
    const range_count = try reader.read_varint();
    _ = try reader.read_varint();
    // Each range takes at least 2 bytes, which bounds the loop by the bytes left.
    if (range_count > reader.remaining() / 2) return error.Malformed;
    var i: u64 = 0;
    while (i < range_count) : (i += 1) {
        _ = try reader.read_varint();
        _ = try reader.read_varint();
    }
    if (ecn) {
        for (0..3) |_| _ = try reader.read_varint();
    }
}
