//! The `stdout` sink: one JSON line per message (an event or a scan row,
//! [`crate::json`]), flushed before `deliver` returns. Writes to any writer
//! for tests.

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::SinkError;
use crate::json::Message;

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

    pub(crate) async fn deliver(&mut self, messages: &[Message]) -> Result<(), SinkError> {
        let mut lines = Vec::new();
        for message in messages {
            lines.extend_from_slice(&message.payload);
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
