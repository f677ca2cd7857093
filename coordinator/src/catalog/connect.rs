//! Opening a catalog: parsing its URL, connecting the SQLite or PostgreSQL
//! pool, and running the migrations embedded from
//! `coordinator/migrations/<backend>/`.

use std::borrow::Cow;
use std::path::Path;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous,
};

use super::{
    ACQUIRE_TIMEOUT, CatalogError, MEMORY_URL, MIGRATE_ATTEMPTS_MAX, POOL_CONNECTIONS_MAX, Pool,
    SQLITE_BUSY_TIMEOUT, db,
};

/// One backend's migrations, embedded in the binary: for each file
/// `migrations/<backend>/NNNN_name.sql`, its version, its description (the
/// name with `_` as spaces) and its SQL, as `sqlx::migrate!` would read
/// them. Listed by hand instead of by that macro: the macro needs sqlx's
/// `macros` feature, which builds a second copy of sqlx and of SQLite's C
/// sources for the compiler, in every profile, for this one list. The test
/// `embedded_migrations_are_the_directory` keeps the list and the files
/// the same (a forgotten file, a reordered one, a changed checksum).
struct Embedded(&'static [(i64, &'static str, &'static str)]);

/// Both backends' lists from one table of files (each backend has the same
/// files, in its own SQL dialect).
macro_rules! embedded {
    ($($version:literal $file:literal $description:literal),+ $(,)?) => {
        const SQLITE_MIGRATIONS: Embedded = Embedded(&[$((
            $version,
            $description,
            include_str!(concat!("../../migrations/sqlite/", $file)),
        )),+]);
        const POSTGRES_MIGRATIONS: Embedded = Embedded(&[$((
            $version,
            $description,
            include_str!(concat!("../../migrations/postgres/", $file)),
        )),+]);
    };
}

embedded!(
    1 "0001_catalog.sql" "catalog",
    2 "0002_replication.sql" "replication",
    3 "0003_coordinator_status.sql" "coordinator status",
    4 "0004_groups.sql" "groups",
    5 "0005_feed_cursors.sql" "feed cursors",
    6 "0006_cluster_id.sql" "cluster id",
    7 "0007_auth.sql" "auth",
);

impl Embedded {
    /// The migrations as sqlx runs them (checksums computed here).
    fn migrations(&self) -> Vec<Migration> {
        self.0
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    Cow::Borrowed(sql),
                    // sqlx's own opt-out of the per-migration transaction.
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect()
    }

    async fn migrator(self) -> Result<Migrator, sqlx::migrate::MigrateError> {
        Migrator::new(self).await
    }
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<i64> = self.0.iter().map(|m| m.0).collect();
        f.debug_tuple("Embedded").field(&versions).finish()
    }
}

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self.migrations();
        Box::pin(async move { Ok(migrations) })
    }
}

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
    let migrator = SQLITE_MIGRATIONS
        .migrator()
        .await
        .map_err(|source| CatalogError::Migrate {
            context: "reading the SQLite catalog's migrations".into(),
            source,
        })?;
    let mut attempt = 1;
    loop {
        match migrator.run(&pool).await {
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
    let migrator =
        POSTGRES_MIGRATIONS
            .migrator()
            .await
            .map_err(|source| CatalogError::Migrate {
                context: "reading the PostgreSQL catalog's migrations".into(),
                source,
            })?;
    migrator
        .run(&pool)
        .await
        .map_err(|source| CatalogError::Migrate {
            context: format!("migrating the PostgreSQL catalog {place}"),
            source,
        })?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sqlx records of a migration (and checks on every later run).
    fn recorded(m: &Migration) -> (i64, String, Vec<u8>, bool, bool) {
        (
            m.version,
            m.description.to_string(),
            m.checksum.to_vec(),
            m.no_tx,
            m.migration_type == MigrationType::Simple,
        )
    }

    /// The embedded lists equal what sqlx reads from the directories (what
    /// `sqlx::migrate!` embedded before): same files, order, descriptions
    /// and checksums, so catalogs migrated by earlier binaries stay valid.
    #[tokio::test]
    async fn embedded_migrations_are_the_directory() {
        for (backend, embedded) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let from_dir = Migrator::new(dir.as_path())
                .await
                .expect("read the directory");
            let from_binary = embedded.migrator().await.expect("embedded migrations");
            let want: Vec<_> = from_dir.iter().map(recorded).collect();
            let got: Vec<_> = from_binary.iter().map(recorded).collect();
            assert!(!want.is_empty(), "no migrations in {}", dir.display());
            assert_eq!(
                got,
                want,
                "{backend}: the embedded list in connect.rs differs from {}",
                dir.display()
            );
        }
    }
}
