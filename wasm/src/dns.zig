//! DNS message parser (RFC 1035 4.1, EDNS0 per RFC 6891 6.1): header fields, the first
//! question's name (lowercased, dotted), qtype/qclass, and the OPT record found by walking
//! every resource record. Reads only inside `packet`; writes only into `result` and `name`.
const layout = @import("layout.zig");
const bytes = @import("bytes.zig");
const Reader = bytes.Reader;
const Error = layout.Error;
const Result = layout.Result;

/// RFC 1035 4.1.1: the fixed header is 12 bytes.
const header_bytes = 12;
/// RFC 1035 2.3.4: a name is at most 255 octets on the wire, length bytes included.
const name_wire_bytes_max = 255;
/// A 255-octet name has at most 127 labels, so more compression pointers than that in one
/// name can only be a loop or padding games (RFC 1035 4.1.4 leaves the bound to us).
const pointer_count_max = 127;
/// RFC 6891 6.1.2: OPT is RR type 41.
const type_opt = 41;

const NameEnd = struct {
    /// Index just past the name in the message (past the first pointer, if any).
    end_index: usize,
    text_bytes: usize,
};

/// Walks a possibly compressed name starting at `start`. When `text` is not null, writes the
/// lowercased dotted form ("" for the root). Pointers must point strictly backwards
/// ("a prior occurrence", RFC 1035 4.1.4) and are counted, so the walk always ends.
fn read_name(packet: []const u8, start: usize, text: ?*[layout.name_bytes_max]u8) Error!NameEnd {
    var index = start;
    var end_index: ?usize = null;
    var wire_bytes: usize = 0;
    var text_bytes: usize = 0;
    var pointer_count: usize = 0;
    // Each pass consumes a label (at most 127 fit in 255 octets) or a pointer (bounded).
    const pass_count_max = name_wire_bytes_max + pointer_count_max + 1;
    var pass_count: usize = 0;
    while (pass_count < pass_count_max) : (pass_count += 1) {
        if (index >= packet.len) return error.Short;
        const length = packet[index];
        switch (length & 0xc0) {
            0x00 => {
                wire_bytes += 1 + @as(usize, length);
                if (wire_bytes > name_wire_bytes_max) return error.Malformed;
                if (length == 0) {
                    return .{ .end_index = end_index orelse index + 1, .text_bytes = text_bytes };
                }
                if (packet.len - index - 1 < length) return error.Short;
                const label = packet[index + 1 ..][0..length];
                if (text) |out| {
                    if (text_bytes > 0) {
                        out[text_bytes] = '.';
                        text_bytes += 1;
                    }
                    for (label) |b| {
                        out[text_bytes] = bytes.lower_ascii(b);
                        text_bytes += 1;
                    }
                } else {
                    text_bytes += @as(usize, length) + @intFromBool(text_bytes > 0);
                }
                index += 1 + @as(usize, length);
            },
            0xc0 => {
                if (packet.len - index < 2) return error.Short;
                const target = (@as(usize, length & 0x3f) << 8) | packet[index + 1];
                if (target >= index) return error.Malformed;
                pointer_count += 1;
                if (pointer_count > pointer_count_max) return error.Malformed;
                if (end_index == null) end_index = index + 2;
                index = target;
            },
            // 0x40 and 0x80: extended label types, never deployed and obsoleted
            // (RFC 6891 5).
            else => return error.Malformed,
        }
    }
    return error.Malformed;
}

pub fn parse(packet: []const u8, result: *Result, name: *[layout.name_bytes_max]u8) Error!void {
    if (packet.len < header_bytes) return error.Short;
    var reader = Reader.init(packet);
    const id = try reader.read_u16();
    const flags = try reader.read_u16();
    const qdcount = try reader.read_u16();
    const ancount = try reader.read_u16();
    const nscount = try reader.read_u16();
    const arcount = try reader.read_u16();
    result.field[layout.dns_id] = id;
    result.field[layout.dns_flags] = flags;
    result.field[layout.dns_qdcount] = qdcount;
    result.field[layout.dns_ancount] = ancount;
    result.field[layout.dns_nscount] = nscount;
    result.field[layout.dns_arcount] = arcount;
    result.field[layout.dns_rcode] = flags & 0x0f;

    // Questions: the first one is reported, the rest are skipped (RFC 1035 4.1.2).
    var question_index: usize = 0;
    while (question_index < qdcount) : (question_index += 1) {
        const first = question_index == 0;
        const name_end = try read_name(packet, reader.index, if (first) name else null);
        reader.index = name_end.end_index;
        const qtype = try reader.read_u16();
        const qclass = try reader.read_u16();
        if (first) {
            result.name_bytes = @intCast(name_end.text_bytes);
            result.field[layout.dns_qtype] = qtype;
            result.field[layout.dns_qclass] = qclass;
        }
    }

    // Resource records: walked to find OPT, which lives in the additional section
    // (RFC 6891 6.1.1). The counts are u16, and each record takes at least 11 bytes, so the
    // loop is bounded by both.
    const record_count = @as(usize, ancount) + nscount + arcount;
    const additional_index = @as(usize, ancount) + nscount;
    var record_index: usize = 0;
    while (record_index < record_count) : (record_index += 1) {
        const name_start = reader.index;
        const name_end = try read_name(packet, name_start, null);
        reader.index = name_end.end_index;
        const rr_type = try reader.read_u16();
        const rr_class = try reader.read_u16();
        const rr_ttl = try reader.read_u32();
        const rdata_bytes = try reader.read_u16();
        try reader.skip(rdata_bytes);
        if (rr_type != type_opt or record_index < additional_index) continue;
        // RFC 6891 6.1.1: one OPT at most, and its owner name is the root.
        if (result.field[layout.dns_edns_present] != 0) return error.Malformed;
        if (name_end.text_bytes != 0) return error.Malformed;
        result.field[layout.dns_edns_present] = 1;
        // RFC 6891 6.1.2: CLASS carries the requestor's UDP payload size; TTL carries the
        // extended RCODE (high 8 bits), VERSION, and the DO bit (6.1.4).
        result.field[layout.dns_edns_udp_payload_bytes] = rr_class;
        result.field[layout.dns_edns_version] = (rr_ttl >> 16) & 0xff;
        result.field[layout.dns_edns_do] = (rr_ttl >> 15) & 1;
        result.field[layout.dns_rcode] = ((rr_ttl >> 24) << 4) | (flags & 0x0f);
    }
}
