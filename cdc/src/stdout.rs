//! The `stdout` sink: one JSON line per event ([`crate::json`]), flushed
//! before `deliver` returns. Writes to any writer for tests.

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use trellis_proto::v1::FeedEvent;

use crate::SinkError;
use crate::json::encode_event;

/// JSON lines into a writer.
pub struct JsonLines {
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    name: String,
}

impl JsonLines {
    pub(crate) fn stdout() -> JsonLines {
        JsonLines::new(Box::new(tokio::io::stdout()), "stdout")
    }

    pub(crate) fn new(writer: Box<dyn AsyncWrite + Unpin + Send>, name: &str) -> JsonLines {
        JsonLines {
            writer,
            name: name.to_string(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) async fn deliver(&mut self, events: &[FeedEvent]) -> Result<(), SinkError> {
        let mut lines = Vec::new();
        for event in events {
            lines.extend_from_slice(&encode_event(event));
            lines.push(b'\n');
        }
        self.writer
            .write_all(&lines)
            .await
            .map_err(SinkError::broker(&self.name, "writing events"))?;
        self.writer
            .flush()
            .await
            .map_err(SinkError::broker(&self.name, "flushing events"))
    }
}
