//! Result codes, result records and the fields each parser writes. The TypeScript facade
//! (src/classify/layout.ts) mirrors these numbers; test/unit/classify/layout.test.ts checks
//! that the two agree against the exported layout functions.
const std = @import("std");

/// What a parser says about its input. "short" means a prefix of something that may still
/// parse once more bytes arrive; "malformed" means no suffix can make it valid.
pub const Code = enum(u32) {
    ok = 0,
    short = 1,
    malformed = 2,
    unsupported = 3,
};

pub const Error = error{ Short, Malformed, Unsupported };

pub fn code_from_error(err: Error) Code {
    return switch (err) {
        error.Short => .short,
        error.Malformed => .malformed,
        error.Unsupported => .unsupported,
    };
}

/// Which parser wrote a record (also the descriptor's parser selector in a batch).
pub const Kind = enum(u32) {
    none = 0,
    dns = 1,
    quic_header = 2,
    quic_initial = 3,
    tls = 4,
    tls_stream = 5,
};

pub const field_count = 26;

/// One fixed-size record per parsed packet: 32 little-endian u32 words (128 bytes), so the
/// facade reads it through one preallocated Uint32Array at index (record_index << 5).
/// Offsets are absolute linear-memory offsets: JS views them through memory.buffer directly.
pub const Result = extern struct {
    code: u32,
    kind: u32,
    /// DNS: the first question's name, QUIC/TLS: the SNI host_name. Lowercased ASCII.
    name_offset: u32,
    name_bytes: u32,
    /// The ALPN protocol_name_list in wire form (1-byte length prefixed names, RFC 7301 3.1).
    alpn_offset: u32,
    alpn_bytes: u32,
    field: [field_count]u32,

    pub fn clear(self: *Result, kind: Kind) void {
        self.* = std.mem.zeroes(Result);
        self.kind = @intFromEnum(kind);
    }
};

comptime {
    std.debug.assert(@sizeOf(Result) == 128);
}

/// DNS names are at most 255 octets on the wire (RFC 1035 2.3.4), so at most 253 in dotted
/// text; SNI host_name is a DNS hostname (RFC 6066 3). 256 holds either.
pub const name_bytes_max = 256;
/// Room for the ALPN list; a longer list is cut at a whole entry and flagged truncated.
pub const alpn_bytes_max = 256;

/// Text written by one record lives beside it in a parallel table (same index).
pub const Text = extern struct {
    name: [name_bytes_max]u8,
    alpn: [alpn_bytes_max]u8,
};

// Field indices, by parser. Keep in sync with src/classify/layout.ts.

// DNS (RFC 1035 4.1.1 header, 4.1.2 question, RFC 6891 6.1 OPT).
pub const dns_id = 0;
pub const dns_flags = 1;
pub const dns_qdcount = 2;
pub const dns_ancount = 3;
pub const dns_nscount = 4;
pub const dns_arcount = 5;
pub const dns_qtype = 6;
pub const dns_qclass = 7;
pub const dns_edns_present = 8;
pub const dns_edns_udp_payload_bytes = 9;
pub const dns_edns_version = 10;
pub const dns_edns_do = 11;
/// 12-bit RCODE: OPT's extended high 8 bits above the header's 4 bits (RFC 6891 6.1.3).
pub const dns_rcode = 12;

// QUIC header (RFC 8999 5, RFC 9000 17).
pub const quic_version = 0;
pub const quic_long = 1;
pub const quic_type = 2;
pub const quic_dcid_offset = 3;
pub const quic_dcid_bytes = 4;
pub const quic_scid_offset = 5;
pub const quic_scid_bytes = 6;
pub const quic_token_offset = 7;
pub const quic_token_bytes = 8;
/// Long header: first byte after the Length field (the protected packet number).
pub const quic_payload_offset = 9;
/// Bytes of this packet within the datagram (coalesced packets follow it, RFC 9000 12.2).
pub const quic_packet_bytes = 10;
pub const quic_length = 11;

/// Packet types normalized to the QUIC v1 numbering (RFC 9000 17.2); v2 remaps its bits
/// (RFC 9369 3.2) and is translated back to these.
pub const QuicType = enum(u32) {
    initial = 0,
    zero_rtt = 1,
    handshake = 2,
    retry = 3,
    version_negotiation = 4,
    one_rtt = 5,
};

// ClientHello facts, shared by QUIC Initial and TLS (RFC 8446 4.1.2).
pub const hello_bytes = 12;
pub const hello_legacy_version = 13;
pub const hello_cipher_suite_count = 14;
pub const hello_extension_count = 15;
pub const hello_flags = 16;
pub const hello_alpn_count = 17;

pub const hello_flag_sni: u32 = 1;
pub const hello_flag_alpn: u32 = 2;
pub const hello_flag_alpn_truncated: u32 = 4;

// QUIC Initial decryption and CRYPTO reassembly.
pub const initial_crypto_contiguous_bytes = 18;
pub const initial_context_index = 19;
pub const initial_packet_number = 20;
pub const initial_packets_count = 21;
/// The last opened packet's unprotected header and plaintext stay in scratch until the next
/// Initial (quic_scratch_* exports); these give their lengths, for tests and debugging.
pub const initial_header_bytes = 22;
pub const initial_plain_bytes = 23;

// TLS over TCP stream reassembly.
pub const stream_buffered_bytes = 18;
pub const stream_record_count = 19;
pub const stream_consumed_bytes = 20;
