use clap::Parser;

/// mimalloc (v2) rather than glibc's malloc: a request makes a handful of small
/// allocations, and glibc spent about 350 instructions on each (malloc and free),
/// 6.6% of a proxied request's user-space instructions (docs/benchmarks.md).
/// Without transparent huge pages (`no_thp`): on a machine that grants them on
/// request they doubled the heap's resident memory, for no measurable speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weft::cli::main(weft::cli::Cli::parse())
}
