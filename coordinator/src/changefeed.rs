//! The public `trellis.v1.Changefeed` service (DESIGN.md §11): `Watch` runs
//! `trellis_txn::feed`'s fan-in over this coordinator's router;
//! `SaveCursor` and `LoadCursor` keep a feed's cursor in the catalog (as
//! the encoded `FeedCursor`), so a restarted `trellis cdc` resumes, and
//! `DeleteCursor` forgets one (the groups' logs are kept for registered
//! feeds: see `GroupConfig.feed_keep_from`).

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use trellis_proto::v1 as pb;

use crate::router::CatalogRouter;
use crate::service::{deadline_of, invalid};
use crate::txn::TxnManager;
use trellis_txn::feed::{WATCH_BUFFER_MAX, watch, watch_spec};

/// The public change feed service.
#[derive(Clone)]
pub struct ChangefeedApi {
    txns: Arc<TxnManager>,
}

impl ChangefeedApi {
    pub fn new(txns: Arc<TxnManager>) -> Self {
        ChangefeedApi { txns }
    }
}

#[tonic::async_trait]
impl pb::changefeed_server::Changefeed for ChangefeedApi {
    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
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
        let spec = watch_spec(request.into_inner(), &groups)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER_MAX);
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
        let req = request.into_inner();
        crate::catalog::check_feed_name(&req.feed).map_err(invalid)?;
        let cursor = req
            .cursor
            .ok_or_else(|| invalid("SaveCursor needs a cursor"))?
            .encode_to_vec();
        let catalog = self.txns.router().catalog();
        crate::service::catalog_read(deadline, catalog.save_feed_cursor(&req.feed, &cursor))
            .await?;
        Ok(Response::new(pb::SaveCursorResponse {}))
    }

    async fn load_cursor(
        &self,
        request: Request<pb::LoadCursorRequest>,
    ) -> Result<Response<pb::LoadCursorResponse>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        crate::catalog::check_feed_name(&req.feed).map_err(invalid)?;
        let catalog = self.txns.router().catalog();
        let saved =
            crate::service::catalog_read(deadline, catalog.load_feed_cursor(&req.feed)).await?;
        let cursor = match saved {
            None => None,
            Some(bytes) => Some(pb::FeedCursor::decode(bytes.as_slice()).map_err(|e| {
                Status::internal(format!(
                    "the catalog holds an undecodable cursor for feed {:?}: {e}",
                    req.feed
                ))
            })?),
        };
        Ok(Response::new(pb::LoadCursorResponse { cursor }))
    }

    async fn delete_cursor(
        &self,
        request: Request<pb::DeleteCursorRequest>,
    ) -> Result<Response<pb::DeleteCursorResponse>, Status> {
        let deadline = deadline_of(&request);
        let req = request.into_inner();
        crate::catalog::check_feed_name(&req.feed).map_err(invalid)?;
        let catalog = self.txns.router().catalog();
        let existed =
            crate::service::catalog_read(deadline, catalog.delete_feed_cursor(&req.feed)).await?;
        Ok(Response::new(pb::DeleteCursorResponse { existed }))
    }
}
