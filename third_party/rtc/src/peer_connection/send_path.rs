//! Added for moim (see PATCHED.md): the application can protect and send RTP itself, past the
//! handler pipeline and the interceptor chain.

use super::RTCPeerConnection;
use std::net::SocketAddr;

impl RTCPeerConnection {
    /// Where RTP goes and the SRTP context that protects it, once ICE has selected a pair and
    /// DTLS has produced keys; `None` before.
    ///
    /// An application that forwards at scale may build each RTP packet itself, protect it with
    /// this context and send it to this address, instead of [`RTCRtpSender::write_rtp`]. What
    /// it sends that way passes no interceptor and counts in no statistics: it then answers
    /// NACKs, stamps transport-wide sequence numbers and sends sender reports on its own.
    /// Each SSRC must go out one way only, since the context keeps each SSRC's rollover count.
    ///
    /// The address is read per call: the remote side may nominate another pair at any time.
    ///
    /// [`RTCRtpSender::write_rtp`]: crate::rtp_transceiver::rtp_sender::RTCRtpSender::write_rtp
    pub fn rtp_send_path(&mut self) -> Option<(SocketAddr, &mut srtp::context::Context)> {
        let (_, remote) = self
            .pipeline_context
            .ice_handler_context
            .ice_transport
            .agent
            .get_selected_candidate_pair()?;
        let peer_addr = remote.addr();
        let context = self
            .pipeline_context
            .srtp_handler_context
            .local_srtp_context
            .as_mut()?;
        Some((peer_addr, context))
    }
}
