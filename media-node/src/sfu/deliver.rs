//! An interceptor at the application end of the rtc chain: lets inbound RTCP through to the
//! application and records the congestion controller's estimate on the way.

use rtc::interceptor::{
    Attribute, Interceptor, Packet as InterceptorPacket, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Marks inbound RTCP for delivery to the engine (keyframe requests, NACK counts, receiver
/// reports and REMB feed the forwarding decisions); the interceptors after it still act on it.
///
/// Keyframe requests (PLI, FIR) are also taken here, before the library routes the RTCP: it
/// routes a compound packet by its first report's SSRC and drops the whole packet when that
/// names no track of the connection (a receiver report about a stream just removed, or one
/// with no report blocks), which lost most of a subscriber's PLIs after a renegotiation
/// (measured: 1 of 13 reached the engine). A lost PLI is a frozen picture until the next one.
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
    /// Media SSRCs a keyframe was asked for, drained by the engine.
    keyframes: KeyframeRequests,
}

/// Media SSRCs the far end asked keyframes for (bounded: a flood keeps the newest).
#[derive(Default, Clone)]
pub struct KeyframeRequests(Arc<Mutex<Vec<u32>>>);

/// Most keyframe requests held between two drains.
const MAX_KEYFRAME_REQUESTS: usize = 256;

impl KeyframeRequests {
    fn push(&self, ssrc: u32) {
        let Ok(mut v) = self.0.lock() else { return };
        if v.len() >= MAX_KEYFRAME_REQUESTS {
            v.remove(0);
        }
        if !v.contains(&ssrc) {
            v.push(ssrc);
        }
    }

    /// Takes what arrived since the last call.
    pub fn take(&self) -> Vec<u32> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

impl DeliverRtcp {
    /// Where the latest send-side estimate lands, as `f64::to_bits` (0: none yet).
    pub fn estimate(&self) -> Arc<AtomicU64> {
        self.estimate.clone()
    }

    /// Where keyframe requests land.
    pub fn keyframes(&self) -> KeyframeRequests {
        self.keyframes.clone()
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> std::result::Result<(), Self::Error> {
        if let InterceptorPacket::Rtcp(packets) = &msg.message.packet {
            for p in packets {
                let any = p.as_any();
                if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                    self.keyframes.push(pli.media_ssrc);
                } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                    for e in &fir.fir {
                        self.keyframes.push(e.ssrc);
                    }
                }
            }
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
