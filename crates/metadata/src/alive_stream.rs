//! The sending side of the `Alive` liveness stream (`proto/controller.proto`): one stream
//! held open to one controller with a ping each interval, opened again after `retry` when
//! it breaks. The stream ends when the task holding it is dropped or aborted, or when the
//! process dies, which the controller reads as this sender gone.

use std::time::Duration;

use tokio_stream::wrappers::IntervalStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::proto::controller::alive_ping::Sender;
use crate::proto::controller::controller_client::ControllerClient;
use crate::proto::controller::AlivePing;

/// Runs until dropped: holds `sender`'s `Alive` stream to the controller behind `client`.
pub async fn hold_alive_stream(
    mut client: ControllerClient<Channel>,
    sender: Sender,
    interval: Duration,
    retry: Duration,
) {
    loop {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pings = IntervalStream::new(ticks).map(move |_| AlivePing {
            sender: Some(sender),
        });
        // returns only when the controller ends the stream (it is stopping) or the
        // connection breaks; an unreachable controller is the heartbeat loop's concern
        let _ = client.alive(pings).await;
        tokio::time::sleep(retry).await;
    }
}
