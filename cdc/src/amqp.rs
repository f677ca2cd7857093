//! The RabbitMQ sink: one channel with publisher confirms on, the exchange
//! declared topic and durable, each event's JSON published persistent and
//! `mandatory` with message id `trellis-<group>-<position>` and routing key
//! `trellis.<group>`, all of a delivery published before any confirm is
//! awaited, and every confirm awaited.
//!
//! `mandatory` because a topic exchange silently drops a message that no
//! queue's binding matches and still confirms it: such an event would be
//! checkpointed as delivered and be lost. Returned, it is an error, and
//! `trellis cdc` retries until a queue is bound.

use crate::SinkError;
use crate::json::Message;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

/// The virtual host the sink connects to.
pub const VHOST: &str = "/";
/// AMQP's persistent delivery mode: the broker writes the message to disk
/// (in a durable queue) before confirming it.
const DELIVERY_MODE_PERSISTENT: u8 = 2;

/// The routing key of a group's events and scan rows: `trellis.<group>`,
/// so a consumer may bind `trellis.#` for every group or `trellis.3` for
/// one.
pub fn routing_key(group: u64) -> String {
    format!("trellis.{group}")
}

/// An open RabbitMQ sink. The connection is held so that it lives as long
/// as the channel.
pub struct AmqpSink {
    _connection: Connection,
    channel: lapin::Channel,
    exchange: String,
    name: String,
}

impl AmqpSink {
    pub(crate) async fn connect(
        user: &str,
        password: &str,
        host: &str,
        port: u16,
        exchange: &str,
    ) -> Result<AmqpSink, SinkError> {
        let name = format!("RabbitMQ amqp://{user}@{host}:{port}/{exchange}");
        let uri = AMQPUri {
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: user.to_string(),
                    password: password.to_string(),
                },
                host: host.to_string(),
                port,
            },
            vhost: VHOST.to_string(),
            ..AMQPUri::default()
        };
        let connection = Connection::connect_uri(uri, ConnectionProperties::default())
            .await
            .map_err(SinkError::connect(&name))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(SinkError::broker(&name, "opening a channel"))?;
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(SinkError::broker(
                &name,
                format!(
                    "declaring exchange {exchange} (topic, durable; an exchange of that name \
                     with another type or durability cannot be used)"
                ),
            ))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(SinkError::broker(&name, "putting publisher confirms on"))?;
        Ok(AmqpSink {
            _connection: connection,
            channel,
            exchange: exchange.to_string(),
            name,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) async fn deliver(&mut self, messages: &[Message]) -> Result<(), SinkError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let what = m.what.clone();
            let properties = BasicProperties::default()
                .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
                .with_content_type("application/json".into())
                .with_message_id(m.id.clone().into());
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key(m.group).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.payload,
                    properties,
                )
                .await
                .map_err(SinkError::broker(&self.name, format!("publishing {what}")))?;
            confirms.push((what, confirm));
        }
        for (what, confirm) in confirms {
            let confirmation = confirm.await.map_err(SinkError::broker(
                &self.name,
                format!("awaiting the confirm of {what}"),
            ))?;
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(returned)) => {
                    return Err(SinkError::Refused {
                        sink: self.name.clone(),
                        what: format!(
                            "exchange {} routed {what} to no queue ({} {}): bind a queue to it \
                             with routing key `trellis.#` (or `trellis.<group>`)",
                            self.exchange, returned.reply_code, returned.reply_text
                        ),
                    });
                }
                Confirmation::Nack(_) => {
                    return Err(SinkError::Refused {
                        sink: self.name.clone(),
                        what: format!("the broker refused {what} (a nack)"),
                    });
                }
                Confirmation::NotRequested => {
                    return Err(SinkError::Refused {
                        sink: self.name.clone(),
                        what: format!(
                            "the broker did not confirm {what}: publisher confirms are off"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
