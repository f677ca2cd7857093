//! `trellis coordinator`: the stateless transaction coordinator, serving the
//! public `Txn` and `Admin` services and the shards' `Membership` service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use trellis_coordinator::catalog::Catalog;
use trellis_coordinator::metrics::Metrics;
use trellis_coordinator::reshard_driver::Driver;
use trellis_coordinator::router::{CatalogRouter, Router};
use trellis_coordinator::txn::TxnManager;
use trellis_coordinator::{refresher, service, sweeper};

/// How long in-flight requests may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(clap::Args)]
#[command(after_help = "\
The catalog holds the cluster's metadata: shard groups, their members, the
slot map. `sqlite://PATH` keeps it in a local file (one coordinator);
`postgres://USER@HOST:PORT/DB` lets several coordinators share it.

The first coordinator creates the cluster with --groups N; later ones (and
restarts) may omit it. Shards join with `trellis shard --coordinator ADDR`.
Prints `READY grpc=ADDR metrics=ADDR` once it serves.

Examples:
  trellis coordinator --catalog sqlite://./data/catalog.db --groups 3
  trellis coordinator --catalog postgres://postgres@db:5432/trellis --listen 0.0.0.0:50051")]
pub struct Args {
    /// Catalog URL: sqlite://PATH or postgres://...
    #[arg(long, default_value = "sqlite://./trellis-data/catalog.db", value_parser = catalog_url)]
    catalog: String,
    /// Address for the Txn, Admin and Membership gRPC services.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address for Prometheus metrics at /metrics (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Create the cluster with this many shard groups if the catalog is
    /// empty (must match if it is not).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(trellis_coordinator::catalog::GROUPS_MAX)))]
    groups: Option<u32>,
    /// Address to advertise in the catalog (default: the bound --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Exit when the parent process goes away (used by `trellis dev`).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

/// Checks the shape of `--catalog` while parsing (a bad one is a usage
/// error, exit code 2); opening it is `Catalog::connect`'s business.
fn catalog_url(url: &str) -> Result<String, String> {
    let ok = match url.strip_prefix("sqlite://") {
        Some(path) => !path.is_empty(),
        None => {
            url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url == trellis_coordinator::catalog::MEMORY_URL
        }
    };
    if ok {
        Ok(url.to_string())
    } else {
        Err(format!(
            "`{url}`: use sqlite://PATH (e.g. sqlite://./data/catalog.db) or postgres://USER@HOST:PORT/DB"
        ))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Every line this process logs, on any thread, is inside its root span.
    let root = crate::logs::coordinator_span();
    let runtime = crate::logs::runtime(&root).context("starting the async runtime")?;
    let _root = root.clone().entered();
    runtime.block_on(serve(args, root))
}

/// Serves until told to stop; `root` is the process's root span, whose
/// fields are recorded as they become known.
async fn serve(args: Args, root: tracing::Span) -> anyhow::Result<()> {
    let catalog = Catalog::connect(&args.catalog)
        .await
        .with_context(|| format!("opening the catalog {}", args.catalog))?;
    let map = match args.groups {
        Some(groups) => catalog
            .bootstrap(groups)
            .await
            .context("creating the cluster in the catalog")?,
        None => catalog.load().await.context(
            "reading the cluster from the catalog (start the first coordinator with --groups N)",
        )?,
    };
    tracing::info!(
        catalog = catalog.backend(),
        map_epoch = map.map_epoch,
        groups = map.groups.len(),
        "catalog loaded"
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding gRPC on {}", args.listen))?;
    let grpc_addr = listener.local_addr()?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());
    let (metrics_addr, metrics_listener) = trellis_metrics::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding metrics on {}", args.metrics_listen))?;
    let id = format!("{advertise}/{}", std::process::id());
    root.record("coordinator", id.as_str());
    catalog
        .register_coordinator(&id, &advertise, &metrics_addr.to_string())
        .await
        .context("registering this coordinator in the catalog")?;

    let metrics = Arc::new(Metrics::default());
    // The map was read from the catalog just above.
    metrics.catalog_read();
    let router = Arc::new(Router::new(catalog, map));
    let txns = TxnManager::new(router, metrics.clone());
    let render = metrics.clone();
    let members_of = txns.router().clone();
    let metrics_task = tokio::spawn(crate::tls::serve_metrics(metrics_listener, move || {
        let mut out = render.render();
        // Every member the map knows has its fail-stop series, at 0 until
        // one is reported.
        let map = members_of.map();
        render.render_fail_stops(
            &mut out,
            map.groups
                .values()
                .flat_map(|g| g.members.iter().map(move |m| (g.id, m.addr.as_str()))),
        );
        crate::tls::render(&mut out);
        out
    }));
    let sweeper_task = tokio::spawn(sweeper(txns.clone()));
    let reshard_wake = Arc::new(tokio::sync::Notify::new());
    let driver = Driver::new(id.clone(), txns.clone(), reshard_wake.clone());
    let driver_task = tokio::spawn(driver.run());
    let refresher_task = tokio::spawn(refresher(
        txns.clone(),
        id,
        advertise,
        metrics_addr.to_string(),
    ));

    // Users, grants and the auth switch: read before serving, so a
    // cluster with auth on never serves a request unchecked.
    let gate = Arc::new(trellis_coordinator::gate::Gate::new(metrics.clone()));
    trellis_coordinator::auth_service::refresh_gate(txns.router().catalog(), &gate)
        .await
        .context("reading users, grants and the auth switch from the catalog")?;
    let gate_task = tokio::spawn(trellis_coordinator::auth_service::gate_refresher(
        txns.router().catalog().clone(),
        gate.clone(),
    ));

    println!("READY grpc={grpc_addr} metrics={metrics_addr}");
    tracing::info!(%grpc_addr, %metrics_addr, "coordinator serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = service::serve_incoming(
        txns,
        reshard_wake,
        gate,
        trellis_net::tls::accept::incoming(listener),
        async {
            let _ = stop_rx.await;
        },
    );
    tokio::pin!(serving);
    let served = tokio::select! {
        served = &mut serving => served,
        () = crate::signals::shutdown(args.exit_with_parent) => {
            let _ = stop_tx.send(());
            tokio::time::timeout(SHUTDOWN_GRACE, &mut serving).await.unwrap_or(Ok(()))
        }
    };
    metrics_task.abort();
    sweeper_task.abort();
    refresher_task.abort();
    gate_task.abort();
    driver_task.abort();
    tracing::info!("coordinator stopped");
    served.context("serving gRPC")
}
