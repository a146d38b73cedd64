//! Builds the header parsers (DNS, QUIC, TLS ClientHello) as one wasm32-freestanding module.
//! Installed to <prefix>/bin/parsers.wasm; scripts/build.sh uses --prefix ../build/wasm.
const std = @import("std");

/// Linear memory is fixed: the relay's C helper writes packets into it by raw pointer, and a
/// memory.grow would detach every view and pointer (docs: DESIGN.md, "C can write straight
/// into WASM memory"). 2 MiB holds the static data (about 1.2 MiB, see src/layout.zig) plus
/// the stack.
const memory_bytes: u64 = 2 * 1024 * 1024;
const stack_bytes: u64 = 128 * 1024;

pub fn build(b: *std.Build) void {
    const optimize = b.standardOptimizeOption(.{});
    const target = b.resolveTargetQuery(.{ .cpu_arch = .wasm32, .os_tag = .freestanding });

    const exe = b.addExecutable(.{
        .name = "parsers",
        .root_source_file = b.path("src/main.zig"),
        .target = target,
        .optimize = optimize,
        // Debug sections are 90% of the module and unused at run time.
        .strip = true,
    });
    exe.entry = .disabled;
    exe.rdynamic = true;
    exe.export_memory = true;
    exe.import_memory = false;
    exe.initial_memory = memory_bytes;
    exe.max_memory = memory_bytes;
    exe.stack_size = stack_bytes;
    b.installArtifact(exe);
}
