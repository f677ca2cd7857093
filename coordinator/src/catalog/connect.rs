//! Opening a catalog: parsing its URL, connecting the SQLite or PostgreSQL
//! pool, and running the migrations embedded from
//! `coordinator/migrations/<backend>/`.

use std::path::Path;

use sqlx::migrate::Migrator;
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous,
};

use super::{
    ACQUIRE_TIMEOUT, CatalogError, MEMORY_URL, MIGRATE_ATTEMPTS_MAX, POOL_CONNECTIONS_MAX, Pool,
    SQLITE_BUSY_TIMEOUT, db,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// Opens the catalog `url` names (see [`super::Catalog::connect`] for the
/// accepted forms); refuses any other with [`CatalogError::BadUrl`].
pub(super) async fn open(url: &str) -> Result<Pool, CatalogError> {
    let bad = |reason| CatalogError::BadUrl {
        url: url.to_string(),
        reason,
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(bad("it names no file"));
        }
        if path.starts_with(":memory:") {
            // Each pooled connection would get its own empty database.
            return Err(bad(
                "an in-memory SQLite database cannot hold a catalog (for one in process memory, use memory:)",
            ));
        }
        Ok(Pool::Sqlite(connect_sqlite(Path::new(path)).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Pool::Postgres(connect_postgres(url).await?))
    } else if let Some(rest) = url.strip_prefix(MEMORY_URL) {
        if !rest.is_empty() {
            return Err(bad("an in-memory catalog takes nothing after `memory:`"));
        }
        Ok(Pool::memory(super::draw_cluster_id()))
    } else {
        Err(bad("it names neither SQLite, PostgreSQL nor memory"))
    }
}

/// The pool limits, the same for both SQL backends.
fn pool_options<DB: sqlx::Database>() -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Opens (creating if missing) the SQLite catalog at `path` and migrates it.
async fn connect_sqlite(path: &Path) -> Result<SqlitePool, CatalogError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| CatalogError::Io {
                context: format!("creating the catalog directory {}", parent.display()),
                source,
            })?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL: readers (every coordinator's map refresh) never block the
        // writer, nor it them.
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed epoch bump survives power loss; losing one would
        // let the next writer hand out the same epoch for a different map.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = pool_options::<Sqlite>()
        .connect_with(options)
        .await
        .map_err(db(format!("opening the SQLite catalog {}", path.display())))?;
    let mut attempt = 1;
    loop {
        match SQLITE_MIGRATIONS.run(&pool).await {
            Ok(()) => return Ok(pool),
            Err(err) if attempt < MIGRATE_ATTEMPTS_MAX => {
                tracing::debug!(%err, attempt, "migrating the SQLite catalog failed; retrying");
                attempt += 1;
            }
            Err(source) => {
                return Err(CatalogError::Migrate {
                    context: format!("migrating the SQLite catalog {}", path.display()),
                    source,
                });
            }
        }
    }
}

/// Connects to the PostgreSQL catalog and migrates it. sqlx holds an
/// advisory lock while migrating PostgreSQL, so racing coordinators apply
/// each migration once.
async fn connect_postgres(url: &str) -> Result<PgPool, CatalogError> {
    let options: PgConnectOptions = url.parse().map_err(|source| CatalogError::Database {
        context: "parsing the PostgreSQL catalog URL".into(),
        source,
    })?;
    // Named without the URL, which may carry a password.
    let place = format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    let pool = pool_options::<Postgres>()
        .connect_with(options)
        .await
        .map_err(db(format!("connecting to the PostgreSQL catalog {place}")))?;
    POSTGRES_MIGRATIONS
        .run(&pool)
        .await
        .map_err(|source| CatalogError::Migrate {
            context: format!("migrating the PostgreSQL catalog {place}"),
            source,
        })?;
    Ok(pool)
}
