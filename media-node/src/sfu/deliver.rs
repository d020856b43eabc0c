//! An interceptor at the application end of the rtc chain: lets inbound RTCP through to the
//! application and records the congestion controller's estimate on the way.

use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, StreamInfo, TaggedPacket,
};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Marks inbound RTCP for delivery to the engine (keyframe requests, NACK counts, receiver
/// reports and REMB feed the forwarding decisions); the interceptors after it still act on it.
///
/// It also picks up the send-side congestion estimate: the congestion-control interceptor
/// attaches [`Attribute::TargetBitrateChanged`] to the TWCC feedback that moved it, and this
/// interceptor sits application-ward of it on the read leg.
#[derive(Default)]
pub struct DeliverRtcp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    /// Latest GCC target in bits per second, as `f64::to_bits`; 0 until the first estimate.
    estimate: Arc<AtomicU64>,
}

impl DeliverRtcp {
    /// Where the latest send-side estimate lands, as `f64::to_bits` (0: none yet).
    pub fn estimate(&self) -> Arc<AtomicU64> {
        self.estimate.clone()
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        if matches!(msg.message.packet, InterceptorPacket::Rtcp(_)) {
            if let Some(Attribute::TargetBitrateChanged { bits_per_second }) =
                msg.message.get(&Attribute::TargetBitrateChanged {
                    bits_per_second: 0.0,
                })
            {
                self.estimate
                    .store(bits_per_second.to_bits(), Ordering::Relaxed);
            }
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
