//! TLS ClientHello parser (RFC 8446 4.1.2) for the server_name (RFC 6066 3) and ALPN
//! (RFC 7301 3.1) extensions, and a streaming context that reassembles a ClientHello split
//! across TCP segments and TLS records (RFC 8446 5.1) with a fixed byte bound.
const layout = @import("layout.zig");
const bytes = @import("bytes.zig");
const Reader = bytes.Reader;
const Error = layout.Error;
const Result = layout.Result;

/// RFC 8446 4: handshake message header is type (1) + u24 length.
pub const handshake_header_bytes = 4;
const handshake_type_client_hello = 1;
/// RFC 8446 4.2 / IANA: extension numbers.
const extension_server_name = 0;
const extension_alpn = 16;
/// RFC 6066 3: NameType host_name.
const name_type_host_name = 0;

/// The largest ClientHello we buffer. Chrome's post-quantum hello (X25519MLKEM768 key share,
/// 1216 bytes, plus GREASE and padding) is under 2 KiB; 16 KiB leaves room for large session
/// tickets and PSK binders while keeping each context small.
pub const hello_bytes_max = 16 * 1024;

/// Parses a complete handshake message (header included). Writes the SNI (lowercased) into
/// `text.name` and the ALPN list (wire form) into `text.alpn`.
pub fn parse_client_hello(message: []const u8, result: *Result, text: *layout.Text) Error!void {
    var reader = Reader.init(message);
    const msg_type = try reader.read_u8();
    if (msg_type != handshake_type_client_hello) return error.Unsupported;
    const body_bytes = try reader.read_u24();
    if (reader.remaining() < body_bytes) return error.Short;
    var body = Reader.init(message[handshake_header_bytes..][0..body_bytes]);
    result.field[layout.hello_bytes] = handshake_header_bytes + body_bytes;

    // RFC 8446 4.1.2: legacy_version, random[32], legacy_session_id<0..32>,
    // cipher_suites<2..2^16-2>, legacy_compression_methods<1..2^8-1>, extensions.
    // Once the header said how long the body is, running out inside it is malformed.
    const legacy_version = body.read_u16() catch return error.Malformed;
    result.field[layout.hello_legacy_version] = legacy_version;
    body.skip(32) catch return error.Malformed;
    const session_id_bytes = body.read_u8() catch return error.Malformed;
    if (session_id_bytes > 32) return error.Malformed;
    body.skip(session_id_bytes) catch return error.Malformed;
    const suites_bytes = body.read_u16() catch return error.Malformed;
    if (suites_bytes < 2 or suites_bytes % 2 != 0) return error.Malformed;
    body.skip(suites_bytes) catch return error.Malformed;
    result.field[layout.hello_cipher_suite_count] = suites_bytes / 2;
    const compression_bytes = body.read_u8() catch return error.Malformed;
    if (compression_bytes < 1) return error.Malformed;
    body.skip(compression_bytes) catch return error.Malformed;
    // Pre-TLS 1.2 hellos may end here with no extensions (RFC 5246 7.4.1.2).
    if (body.remaining() == 0) return;
    const extensions_bytes = body.read_u16() catch return error.Malformed;
    if (extensions_bytes != body.remaining()) return error.Malformed;

    var seen_sni = false;
    var seen_alpn = false;
    var extension_count: u32 = 0;
    // Each extension takes at least 4 bytes, so this ends within extensions_bytes / 4 passes.
    while (body.remaining() > 0) {
        const ext_type = body.read_u16() catch return error.Malformed;
        const ext_bytes = body.read_u16() catch return error.Malformed;
        const ext_data = body.read_slice(ext_bytes) catch return error.Malformed;
        extension_count += 1;
        switch (ext_type) {
            extension_server_name => {
                // RFC 8446 4.2: no extension type may appear twice.
                if (seen_sni) return error.Malformed;
                seen_sni = true;
                try parse_server_name(ext_data, result, text);
            },
            extension_alpn => {
                if (seen_alpn) return error.Malformed;
                seen_alpn = true;
                try parse_alpn(ext_data, result, text);
            },
            else => {},
        }
    }
    result.field[layout.hello_extension_count] = extension_count;
}

fn parse_server_name(data: []const u8, result: *Result, text: *layout.Text) Error!void {
    var reader = Reader.init(data);
    const list_bytes = reader.read_u16() catch return error.Malformed;
    if (list_bytes != reader.remaining() or list_bytes == 0) return error.Malformed;
    // RFC 6066 3: at most one name per type; the host_name is the one we report.
    while (reader.remaining() > 0) {
        const name_type = reader.read_u8() catch return error.Malformed;
        const name_bytes = reader.read_u16() catch return error.Malformed;
        const name = reader.read_slice(name_bytes) catch return error.Malformed;
        if (name_type != name_type_host_name) continue;
        if (result.field[layout.hello_flags] & layout.hello_flag_sni != 0) {
            return error.Malformed;
        }
        // HostName<1..2^16-1>, but a DNS hostname fits 253 characters (RFC 1035 2.3.4).
        if (name_bytes == 0) return error.Malformed;
        if (name_bytes > layout.name_bytes_max - 1) return error.Unsupported;
        for (name, 0..) |b, i| text.name[i] = bytes.lower_ascii(b);
        result.name_bytes = name_bytes;
        result.field[layout.hello_flags] |= layout.hello_flag_sni;
    }
}

fn parse_alpn(data: []const u8, result: *Result, text: *layout.Text) Error!void {
    var reader = Reader.init(data);
    const list_bytes = reader.read_u16() catch return error.Malformed;
    // RFC 7301 3.1: ProtocolName protocol_name_list<2..2^16-1>, each name<1..2^8-1>.
    if (list_bytes != reader.remaining() or list_bytes < 2) return error.Malformed;
    var copied_bytes: usize = 0;
    var count: u32 = 0;
    while (reader.remaining() > 0) {
        const start = reader.index;
        const name_bytes = reader.read_u8() catch return error.Malformed;
        if (name_bytes == 0) return error.Malformed;
        reader.skip(name_bytes) catch return error.Malformed;
        count += 1;
        const entry = data[start..reader.index];
        if (copied_bytes + entry.len <= layout.alpn_bytes_max) {
            @memcpy(text.alpn[copied_bytes..][0..entry.len], entry);
            copied_bytes += entry.len;
        } else {
            result.field[layout.hello_flags] |= layout.hello_flag_alpn_truncated;
        }
    }
    result.alpn_bytes = @intCast(copied_bytes);
    result.field[layout.hello_alpn_count] = count;
    result.field[layout.hello_flags] |= layout.hello_flag_alpn;
}

/// RFC 8446 5.1: TLSPlaintext is type (1) + legacy_record_version (2) + length (2).
const record_header_bytes = 5;
const content_type_handshake = 22;
/// RFC 8446 5.1: a record's length MUST NOT exceed 2^14.
const record_bytes_max = 1 << 14;

/// One TCP stream's ClientHello reassembly. Fixed size: a hello longer than
/// hello_bytes_max is reported unsupported, never buffered further.
pub const StreamContext = struct {
    /// A final code (ok, malformed or unsupported) sticks: later segments change nothing.
    final_code: ?layout.Code = null,
    record_header: [record_header_bytes]u8 = undefined,
    record_header_bytes: usize = 0,
    /// Body bytes of the current record still to come.
    record_remaining_bytes: usize = 0,
    record_count: u32 = 0,
    consumed_bytes: u32 = 0,
    hello_buffered_bytes: usize = 0,
    hello: [hello_bytes_max]u8 = undefined,

    pub fn reset(self: *StreamContext) void {
        self.final_code = null;
        self.record_header_bytes = 0;
        self.record_remaining_bytes = 0;
        self.record_count = 0;
        self.consumed_bytes = 0;
        self.hello_buffered_bytes = 0;
    }

    /// Feeds the next in-order bytes of the stream. Returns short until the ClientHello is
    /// complete; then parses it once and keeps that code.
    pub fn feed(
        self: *StreamContext,
        segment: []const u8,
        result: *Result,
        text: *layout.Text,
    ) layout.Code {
        var code: layout.Code = undefined;
        if (self.final_code) |final_code| {
            code = final_code;
        } else {
            code = self.consume(segment) catch |err| layout.code_from_error(err);
            if (code != .short) self.final_code = code;
        }
        if (code == .ok) {
            const hello_bytes = result_hello_bytes(self.hello[0..self.hello_buffered_bytes]);
            parse_client_hello(self.hello[0..hello_bytes], result, text) catch |err| {
                code = layout.code_from_error(err);
                self.final_code = code;
            };
        }
        result.field[layout.stream_buffered_bytes] = @intCast(self.hello_buffered_bytes);
        result.field[layout.stream_record_count] = self.record_count;
        result.field[layout.stream_consumed_bytes] = self.consumed_bytes;
        return code;
    }

    fn result_hello_bytes(buffered: []const u8) usize {
        const body_bytes = (@as(usize, buffered[1]) << 16) | (@as(usize, buffered[2]) << 8) |
            buffered[3];
        return handshake_header_bytes + body_bytes;
    }

    /// Returns error.Short while more bytes are needed; returns normally once a complete
    /// ClientHello is buffered and parses (the caller re-parses into its result record).
    fn consume(self: *StreamContext, segment: []const u8) Error!layout.Code {
        var index: usize = 0;
        // Every pass consumes at least one byte of the segment.
        while (index < segment.len) {
            if (self.record_remaining_bytes == 0) {
                const header_missing_bytes = record_header_bytes - self.record_header_bytes;
                const take = @min(header_missing_bytes, segment.len - index);
                const header_target = self.record_header[self.record_header_bytes..];
                @memcpy(header_target[0..take], segment[index..][0..take]);
                self.record_header_bytes += take;
                index += take;
                self.consumed_bytes +%= @intCast(take);
                if (self.record_header_bytes < record_header_bytes) break;
                self.record_header_bytes = 0;
                // Anything but a handshake record first is not a TLS client (or not TLS).
                if (self.record_header[0] != content_type_handshake) return error.Unsupported;
                // legacy_record_version is 0x03XX in every TLS/SSLv3 (RFC 8446 5.1).
                if (self.record_header[1] != 3) return error.Unsupported;
                const length = (@as(usize, self.record_header[3]) << 8) | self.record_header[4];
                // RFC 8446 5.1: zero-length handshake fragments MUST NOT be sent.
                if (length == 0 or length > record_bytes_max) return error.Malformed;
                self.record_remaining_bytes = length;
                self.record_count += 1;
                continue;
            }
            const take = @min(self.record_remaining_bytes, segment.len - index);
            const room = hello_bytes_max - self.hello_buffered_bytes;
            const keep = @min(take, room);
            @memcpy(self.hello[self.hello_buffered_bytes..][0..keep], segment[index..][0..keep]);
            self.hello_buffered_bytes += keep;
            self.record_remaining_bytes -= take;
            index += take;
            self.consumed_bytes +%= @intCast(take);
            if (self.hello_buffered_bytes >= 1 and
                self.hello[0] != handshake_type_client_hello) return error.Unsupported;
            if (self.hello_buffered_bytes < handshake_header_bytes) continue;
            const hello_bytes = result_hello_bytes(self.hello[0..self.hello_buffered_bytes]);
            if (hello_bytes > hello_bytes_max) return error.Unsupported;
            if (self.hello_buffered_bytes >= hello_bytes) return .ok;
        }
        return error.Short;
    }
};
