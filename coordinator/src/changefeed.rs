//! The public `trellis.v1.Changefeed` service (DESIGN.md §11): `Watch` runs
//! `trellis_txn::feed`'s fan-in over this coordinator's router;
//! `SaveCursor` and `LoadCursor` keep a feed's cursor in the catalog (as
//! the encoded `FeedCursor`), so a restarted `trellis cdc` resumes, and
//! `DeleteCursor` forgets one (the groups' logs are kept for registered
//! feeds: see `GroupConfig.feed_keep_from`). Every cursor is of this
//! cluster (`Catalog::cluster_id`): Watch and SaveCursor refuse another
//! cluster's (`WRONG_CLUSTER`), and every message a watch sends names it.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use trellis_proto::v1 as pb;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use trellis_txn::authz::Access;
use trellis_txn::feed::{check_cursor_cluster, watch, watch_spec};
use trellis_txn::gate::Gate;
use trellis_types::ClusterId;

use crate::router::CatalogRouter;
use crate::service::{catalog_read, deadline_of, invalid};
use crate::txn::TxnManager;

/// The public change feed service.
#[derive(Clone)]
pub struct ChangefeedApi {
    txns: Arc<TxnManager>,
    /// This cluster's id, read from the catalog once (it never changes).
    cluster: Arc<OnceCell<ClusterId>>,
    /// Who may watch what: `read` on the watched range; the cursor RPCs
    /// need `read` on every key (a cursor is the feed's, not a range's).
    gate: Arc<Gate>,
}

impl ChangefeedApi {
    pub fn new(txns: Arc<TxnManager>, gate: Arc<Gate>) -> Self {
        ChangefeedApi {
            txns,
            cluster: Arc::default(),
            gate,
        }
    }

    /// `read` on every key.
    fn check_every_key<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.gate.check_request(
            request,
            &Access::Watch {
                start: b"",
                end: b"",
            },
        )
    }

    /// This cluster's id: the catalog's, read on first use.
    async fn cluster(&self, deadline: Instant) -> Result<ClusterId, Status> {
        let catalog = self.txns.router().catalog();
        self.cluster
            .get_or_try_init(|| catalog_read(deadline, catalog.cluster_id()))
            .await
            .copied()
    }
}

/// A cursor the catalog holds: one saved before clusters had ids (a
/// `FeedCursor` without `cluster`) was saved in this catalog, so it is this
/// cluster's.
pub fn stored_cursor(mut cursor: pb::FeedCursor, cluster: ClusterId) -> pb::FeedCursor {
    if cursor.cluster == 0 {
        cursor.cluster = cluster.get();
    }
    cursor
}

#[tonic::async_trait]
impl pb::changefeed_server::Changefeed for ChangefeedApi {
    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.gate.check_request(
            &request,
            &Access::Watch {
                start: &request.get_ref().start,
                end: &request.get_ref().end,
            },
        )?;
        let cluster = self.cluster(deadline_of(&request)).await?;
        if let Some(cursor) = &request.get_ref().cursor {
            // Before the groups: another cluster's cursor may well name
            // groups this one has.
            check_cursor_cluster(cursor, cluster)?;
        }
        let router = self.txns.router().clone();
        // A cursor naming a group this coordinator has not seen yet may be
        // one a newer map has: look again before refusing it.
        let mut map = router.map();
        let named: BTreeSet<u64> = request
            .get_ref()
            .cursor
            .iter()
            .flat_map(|c| c.groups.iter().map(|p| p.group))
            .collect();
        if named.iter().any(|g| !map.groups.contains_key(g)) {
            map = router.refresh(&map).await;
        }
        let groups: BTreeSet<u64> = map.groups.keys().copied().collect();
        let spec = watch_spec(request.into_inner(), &groups, cluster)?;
        let (tx, rx) = mpsc::channel(spec.buffer());
        tokio::spawn(watch(router, spec, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn save_cursor(
        &self,
        request: Request<pb::SaveCursorRequest>,
    ) -> Result<Response<pb::SaveCursorResponse>, Status> {
        let deadline = deadline_of(&request);
        self.check_every_key(&request)?;
        let req = request.into_inner();
        crate::catalog::check_feed_name(&req.feed).map_err(invalid)?;
        let cursor = req
            .cursor
            .ok_or_else(|| invalid("SaveCursor needs a cursor"))?;
        let cluster = self.cluster(deadline).await?;
        check_cursor_cluster(&cursor, cluster)?;
        // Saved with the cluster named, also a cursor that named none.
        let cursor = stored_cursor(cursor, cluster).encode_to_vec();
        let catalog = self.txns.router().catalog();
        catalog_read(deadline, catalog.save_feed_cursor(&req.feed, &cursor)).await?;
        Ok(Response::new(pb::SaveCursorResponse {}))
    }

    async fn load_cursor(
        &self,
        request: Request<pb::LoadCursorRequest>,
    ) -> Result<Response<pb::LoadCursorResponse>, Status> {
        let deadline = deadline_of(&request);
        self.check_every_key(&request)?;
        let req = request.into_inner();
        crate::catalog::check_feed_name(&req.feed).map_err(invalid)?;
        let catalog = self.txns.router().catalog();
        let saved = catalog_read(deadline, catalog.load_feed_cursor(&req.feed)).await?;
        let cursor = match saved {
            None => None,
            Some(bytes) => {
                let cursor = pb::FeedCursor::decode(bytes.as_slice()).map_err(|e| {
                    Status::internal(format!(
                        "the catalog holds an undecodable cursor for feed {:?}: {e}",
                        req.feed
                    ))
                })?;
                Some(stored_cursor(cursor, self.cluster(deadline).await?))
            }
        };
        Ok(Response::new(pb::LoadCursorResponse { cursor }))
    }

    async fn delete_cursor(
        &self,
        request: Request<pb::DeleteCursorRequest>,
    ) -> Result<Response<pb::DeleteCursorResponse>, Status> {
        let deadline = deadline_of(&request);
        self.check_every_key(&request)?;
        let req = request.into_inner();
        crate::catalog::check_feed_name(&req.feed).map_err(invalid)?;
        let catalog = self.txns.router().catalog();
        let existed = catalog_read(deadline, catalog.delete_feed_cursor(&req.feed)).await?;
        Ok(Response::new(pb::DeleteCursorResponse { existed }))
    }
}
