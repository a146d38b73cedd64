//! Exports of the parsers module: the memory layout (packet area, descriptor table, result
//! table, text table), one entry point per parser for a single packet, and a batch entry
//! point that parses `count` packets described in the descriptor table.
//!
//! All offsets are byte offsets into the exported linear memory. Memory is fixed-size
//! (build.zig), so an offset stays valid, and so does the C helper's pointer
//! ptr(memory.buffer) + offset, for the life of the instance.
const std = @import("std");
const layout = @import("layout.zig");
const dns = @import("dns.zig");
const quic = @import("quic.zig");
const tls = @import("tls.zig");
const Code = layout.Code;

/// Initial packet keys are derived from the DCID on the wire (RFC 9001 5.2): they protect
/// nothing secret from an observer, so the table-scanning cache-timing mitigations of the
/// software AES and GHASH cost time (measured ~10x, bench/parsers.bench.ts) for no benefit.
pub const std_options: std.Options = .{ .side_channels_mitigations = .none };
const Kind = layout.Kind;
const Result = layout.Result;

/// Receive area for packets, written in place by recvmmsg in the C helper. 512 KiB holds a
/// batch of 256 slots of 2 KiB (a 1500-byte MTU datagram rounded up), or fewer jumbo slots;
/// the relay chooses the slot size. 64-byte alignment puts each slot on a cache line.
pub const packet_area_bytes = 512 * 1024;
var packet_area: [packet_area_bytes]u8 align(64) = undefined;

/// The most packets one batch call parses: the relay's recvmmsg batch (quic-go and the
/// kernel's UDP benchmark drain 64..256 per call).
pub const batch_count_max = 256;

/// One packet to parse: where it is, how long, which parser, and the parser's argument
/// (QUIC header: the short-header DCID length; TLS stream: the context index).
pub const Descriptor = extern struct {
    offset: u32,
    bytes: u32,
    kind: u32,
    argument: u32,
};

comptime {
    std.debug.assert(@sizeOf(Descriptor) == 16);
}

var descriptors: [batch_count_max]Descriptor align(64) = undefined;
/// Record batch_count_max (the last one) belongs to the single-packet entry points, so a
/// single call never overwrites a batch's results.
const result_count = batch_count_max + 1;
const single_index = batch_count_max;
var results: [result_count]Result align(64) = undefined;
var texts: [result_count]layout.Text align(64) = undefined;

/// TLS stream contexts the caller owns by index (one per TCP connection whose hello is
/// being sniffed). One more, the last, serves tls_parse for self-contained buffers.
pub const tls_context_count = 16;
var tls_contexts: [tls_context_count + 1]tls.StreamContext = undefined;
var tls_contexts_ready = false;

fn tls_contexts_init() void {
    if (tls_contexts_ready) return;
    for (&tls_contexts) |*context| context.* = .{};
    tls_contexts_ready = true;
}

/// Returns the packet's bytes if (offset, bytes) lies entirely inside the packet area.
fn packet_slice(offset: u32, bytes: u32) ?[]const u8 {
    const base = @intFromPtr(&packet_area);
    if (offset < base) return null;
    const start = offset - base;
    if (start > packet_area_bytes or bytes > packet_area_bytes - start) return null;
    return packet_area[start..][0..bytes];
}

fn begin(index: usize, kind: Kind) *Result {
    const result = &results[index];
    result.clear(kind);
    result.name_offset = @intCast(@intFromPtr(&texts[index].name));
    result.alpn_offset = @intCast(@intFromPtr(&texts[index].alpn));
    return result;
}

fn finish(result: *Result, code: Code) u32 {
    result.code = @intFromEnum(code);
    return result.code;
}

fn code_of(outcome: layout.Error!void) Code {
    outcome catch |err| return layout.code_from_error(err);
    return .ok;
}

fn run(index: usize, kind: Kind, offset: u32, bytes: u32, argument: u32) u32 {
    const result = begin(index, kind);
    // A descriptor pointing outside the packet area is the caller's bug, but the parser
    // still must not read there: report it as malformed input.
    const packet = packet_slice(offset, bytes) orelse return finish(result, .malformed);
    const text = &texts[index];
    const code: Code = switch (kind) {
        .dns => code_of(dns.parse(packet, result, &text.name)),
        .quic_header => blk: {
            var header = quic.Header{};
            const code = code_of(quic.parse_header(packet, argument, &header));
            quic.write_header(&header, offset, result);
            break :blk code;
        },
        .quic_initial => code_of(quic.parse_initial(packet, offset, result, text)),
        .tls, .tls_stream => blk: {
            tls_contexts_init();
            const context_index = if (kind == .tls) tls_context_count else argument;
            if (context_index > tls_context_count) break :blk .malformed;
            if (kind == .tls_stream and context_index == tls_context_count) break :blk .malformed;
            const context = &tls_contexts[context_index];
            if (kind == .tls) context.reset();
            break :blk context.feed(packet, result, text);
        },
        .none => .unsupported,
    };
    return finish(result, code);
}

// Layout.

export fn packet_area_offset() u32 {
    return @intCast(@intFromPtr(&packet_area));
}
export fn packet_area_size() u32 {
    return packet_area_bytes;
}
export fn descriptor_table_offset() u32 {
    return @intCast(@intFromPtr(&descriptors));
}
export fn descriptor_size() u32 {
    return @sizeOf(Descriptor);
}
export fn batch_count_limit() u32 {
    return batch_count_max;
}
export fn result_table_offset() u32 {
    return @intCast(@intFromPtr(&results));
}
export fn result_size() u32 {
    return @sizeOf(Result);
}
export fn result_single_index() u32 {
    return single_index;
}
export fn text_table_offset() u32 {
    return @intCast(@intFromPtr(&texts));
}
export fn text_size() u32 {
    return @sizeOf(layout.Text);
}
export fn tls_context_limit() u32 {
    return tls_context_count;
}
export fn quic_context_limit() u32 {
    return quic.context_count;
}

// Single packets: results land in record result_single_index().

export fn dns_parse(offset: u32, bytes: u32) u32 {
    return run(single_index, .dns, offset, bytes, 0);
}
export fn quic_header_parse(offset: u32, bytes: u32, short_dcid_bytes: u32) u32 {
    return run(single_index, .quic_header, offset, bytes, short_dcid_bytes);
}
export fn quic_initial_parse(offset: u32, bytes: u32) u32 {
    return run(single_index, .quic_initial, offset, bytes, 0);
}
export fn tls_parse(offset: u32, bytes: u32) u32 {
    return run(single_index, .tls, offset, bytes, 0);
}
export fn tls_stream_parse(context_index: u32, offset: u32, bytes: u32) u32 {
    return run(single_index, .tls_stream, offset, bytes, context_index);
}
export fn tls_stream_reset(context_index: u32) u32 {
    tls_contexts_init();
    if (context_index >= tls_context_count) return @intFromEnum(Code.malformed);
    tls_contexts[context_index].reset();
    return @intFromEnum(Code.ok);
}
export fn quic_contexts_reset() void {
    quic.reset_contexts();
}

/// Scratch holding the last opened Initial: its unprotected header and its plaintext
/// (lengths in the record's initial_header_bytes / initial_plain_bytes fields).
export fn quic_scratch_header_offset() u32 {
    return @intCast(@intFromPtr(&quic.header_scratch));
}
export fn quic_scratch_plain_offset() u32 {
    return @intCast(@intFromPtr(&quic.plain_scratch));
}

/// Derives the client Initial key (16), IV (12) and header protection key (16) for
/// `version` and the DCID at (offset, bytes) in the packet area, into the single record's
/// text slot name[0..44] (RFC 9001 5.2, RFC 9369 3.3). For tests against RFC vectors.
export fn quic_client_keys_derive(version: u32, offset: u32, bytes: u32) u32 {
    const result = begin(single_index, .quic_initial);
    const dcid = packet_slice(offset, bytes) orelse return finish(result, .malformed);
    if (dcid.len > 20) return finish(result, .malformed);
    if (version != quic.version_1 and version != quic.version_2) {
        return finish(result, .unsupported);
    }
    var keys: quic.Keys = undefined;
    quic.derive_client_keys(version, dcid, &keys);
    const out = &texts[single_index].name;
    @memcpy(out[0..16], &keys.key);
    @memcpy(out[16..28], &keys.iv);
    @memcpy(out[28..44], &keys.hp);
    result.name_bytes = 44;
    return finish(result, .ok);
}

/// Parses descriptors[0..count] into results[0..count]. Returns how many were parsed:
/// count, or batch_count_max when count is larger (the caller sees the shortfall).
export fn batch_parse(count: u32) u32 {
    const parse_count = @min(count, batch_count_max);
    for (descriptors[0..parse_count], 0..) |descriptor, i| {
        const kind = std.meta.intToEnum(Kind, descriptor.kind) catch Kind.none;
        _ = run(i, kind, descriptor.offset, descriptor.bytes, descriptor.argument);
    }
    return parse_count;
}
