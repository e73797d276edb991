fn main() -> anyhow::Result<()> {
    openclaw_gateway::cli::main()
}
