//! `troupe-node --config FILE`: runs one node until SIGINT or SIGTERM.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use troupe_node::{Config, Node, Overrides};

#[derive(Parser)]
#[command(name = "troupe-node", version, about = "Run a Troupe node")]
struct Args {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Overrides `data-dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `http-addr`.
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Overrides `native-addr`.
    #[arg(long)]
    native_addr: Option<SocketAddr>,
    /// Overrides `node-id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// Joins a running cluster through this member's HTTP address (a
    /// node of `cluster.spares`).
    #[arg(long)]
    join: Option<String>,
}

/// mimalloc: the engine allocates many small, short-lived values per
/// transition, where glibc malloc showed up as a quarter of the node's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr; stdout announces the listeners (harnesses read it).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=error,ractor_cluster=warn".into()),
        )
        .init();
    // No transparent huge pages: a fault on fresh memory would zero (and
    // may first compact) 2 MiB while a transition waits. On a new node
    // that made p99 100-190 ms for its first seconds at a quarter of the
    // peak rate; 3-14 ms without.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!("could not turn off transparent huge pages: {e}");
    }
    let args = Args::parse();
    let overrides = Overrides {
        node_id: args.node_id,
        data_dir: args.data_dir,
        http_addr: args.http_addr,
        native_addr: args.native_addr,
        join: args.join,
    };
    let config = Config::load(&args.config, &overrides)?;
    let node = Node::start(config).await?;
    println!("troupe-node native protocol on {}", node.native_addr());
    println!("troupe-node listening on http://{}", node.http_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    node.shutdown().await;
    Ok(())
}
