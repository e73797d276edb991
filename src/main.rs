/// mimalloc instead of glibc's malloc: the request path allocates and frees small buffers, and
/// glibc spent a quarter of every request's instructions on them (docs/benchmarks/callgrind.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    openclaw_gateway::cli::main()
}
