//! The router of `trellis_txn` (re-exported: the current map, channels to
//! shards, fault classes) over the coordinator's catalog: the catalog is a
//! [`MapSource`], and [`CatalogRouter`] builds a router over it and gets it
//! back.

use std::any::Any;

use futures::future::BoxFuture;

pub use trellis_txn::router::*;

use crate::catalog::Catalog;
use crate::map::ClusterMap;

/// The catalog: a coordinator's router reads the map there.
impl MapSource for Catalog {
    fn load<'a>(&'a self, _seen: &'a ClusterMap) -> BoxFuture<'a, Result<ClusterMap, String>> {
        Box::pin(async move { Catalog::load(self).await.map_err(|e| e.to_string()) })
    }

    fn name(&self) -> &'static str {
        "the catalog"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A coordinator's router: over its catalog (`use` this trait for
/// `Router::new` and `router.catalog()`).
pub trait CatalogRouter {
    /// A coordinator's router: the map comes from `catalog`.
    fn new(catalog: Catalog, map: ClusterMap) -> Self;

    /// The catalog of a coordinator's router.
    ///
    /// # Panics
    /// On a routing client's router, which has no catalog: only the
    /// coordinator's services, sweeper and reshard driver ask for it, and
    /// they never run in a client.
    fn catalog(&self) -> &Catalog;
}

impl CatalogRouter for Router {
    fn new(catalog: Catalog, map: ClusterMap) -> Self {
        Router::with_source(catalog, map)
    }

    fn catalog(&self) -> &Catalog {
        self.source()
            .as_any()
            .downcast_ref::<Catalog>()
            .expect("a routing client's router has no catalog (it asks a coordinator)")
    }
}

#[cfg(test)]
mod tests {
    use trellis_types::placement::assign_slots;

    use super::*;

    /// A router over a catalog gives that catalog back; one over another
    /// source has none.
    #[test]
    fn a_catalog_router_gives_its_catalog_back() {
        let catalog = Catalog::in_memory();
        let map = ClusterMap {
            map_epoch: 1,
            slots: assign_slots(&[1]),
            groups: Default::default(),
        };
        let router = <Router as CatalogRouter>::new(catalog, map.clone());
        assert_eq!(router.catalog().backend(), "memory");
        assert_eq!(router.source().name(), "the catalog");

        struct Elsewhere;
        impl MapSource for Elsewhere {
            fn load<'a>(
                &'a self,
                seen: &'a ClusterMap,
            ) -> BoxFuture<'a, Result<ClusterMap, String>> {
                Box::pin(async move { Ok(seen.clone()) })
            }
            fn name(&self) -> &'static str {
                "elsewhere"
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }
        let other = Router::with_source(Elsewhere, map);
        let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            other.catalog();
        }));
        assert!(
            asked.is_err(),
            "a router over another source has no catalog"
        );
    }
}
