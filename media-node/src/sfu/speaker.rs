//! Active-speaker detection from the RFC 6464 audio-level header extension.
//!
//! Every audio packet carries the sender's level in -dBov (0 loudest, 127 silence). Levels are
//! folded into a per-participant loudness that decays over time; [`SpeakerDetector::poll`]
//! reports the loudest speakers, at most every [`REPORT_INTERVAL`] and only when the list
//! changed. Time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the speaker list may change.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(300);
/// Levels quieter than this (in -dBov) count as silence.
const SILENCE_DBOV: u8 = 60;
/// Loudness needed to count as speaking.
const SPEAKING_THRESHOLD: f32 = 0.15;
/// Speakers reported at most.
pub const MAX_SPEAKERS: usize = 3;
/// Participants tracked at most per room; levels for more are ignored (bounded map).
pub const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Loudness {
    value: f32,
    at: Instant,
}

/// Tracks loudness per participant in one room.
#[derive(Debug, Default)]
pub struct SpeakerDetector {
    loudness: HashMap<String, Loudness>,
    reported: Vec<String>,
    last_report: Option<Instant>,
    /// Everyone ever reported speaking, most recent first (last-N's order).
    recent: Vec<String>,
}

fn decay(value: f32, elapsed: Duration) -> f32 {
    // Half-life of 400 ms.
    value * 0.5f32.powf(elapsed.as_secs_f32() / 0.4)
}

impl SpeakerDetector {
    /// Records one audio level (`-dBov`, 0..=127) from `participant`.
    pub fn on_level(&mut self, participant: &str, level_dbov: u8, now: Instant) {
        if !self.loudness.contains_key(participant) && self.loudness.len() >= MAX_TRACKED {
            return;
        }
        let sample = if level_dbov >= SILENCE_DBOV {
            0.0
        } else {
            1.0 - f32::from(level_dbov) / f32::from(SILENCE_DBOV)
        };
        let entry = self
            .loudness
            .entry(participant.to_owned())
            .or_insert(Loudness {
                value: 0.0,
                at: now,
            });
        let decayed = decay(entry.value, now.saturating_duration_since(entry.at));
        // Packets come every 20 ms; each moves the loudness 10% toward the sample.
        entry.value = decayed + (sample - decayed) * 0.1;
        entry.at = now;
    }

    /// The speakers last reported, loudest first.
    pub fn reported(&self) -> &[String] {
        &self.reported
    }

    /// Everyone reported speaking since they joined, most recent first: a report puts its
    /// speakers, loudest first, ahead of the rest.
    pub fn recent(&self) -> &[String] {
        &self.recent
    }

    /// Forgets a participant who left.
    pub fn remove(&mut self, participant: &str) {
        self.loudness.remove(participant);
        self.recent.retain(|p| p != participant);
    }

    /// The loudest speakers, if the list changed and a report is due.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<String>> {
        if self
            .last_report
            .is_some_and(|at| now.saturating_duration_since(at) < REPORT_INTERVAL)
        {
            return None;
        }
        let mut speaking: Vec<(f32, &String)> = self
            .loudness
            .iter()
            .map(|(id, l)| (decay(l.value, now.saturating_duration_since(l.at)), id))
            .filter(|(v, _)| *v >= SPEAKING_THRESHOLD)
            .collect();
        speaking.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let list: Vec<String> = speaking
            .into_iter()
            .take(MAX_SPEAKERS)
            .map(|(_, id)| id.clone())
            .collect();
        if list == self.reported {
            return None;
        }
        self.last_report = Some(now);
        for id in list.iter().rev() {
            self.recent.retain(|p| p != id);
            self.recent.insert(0, id.clone());
        }
        self.recent.truncate(MAX_TRACKED);
        self.reported = list.clone();
        Some(list)
    }
}

/// Reads the RFC 6464 level (7 bits, -dBov) from an audio-level extension payload.
pub fn parse_audio_level(ext: &[u8]) -> Option<u8> {
    ext.first().map(|b| b & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loudest_speaker_reported_then_silence_clears() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        for _ in 0..50 {
            d.on_level("ana", 10, t);
            d.on_level("bo", 90, t);
            t += Duration::from_millis(20);
        }
        assert_eq!(d.poll(t), Some(vec!["ana".to_owned()]));
        assert_eq!(d.poll(t), None, "unchanged list is not repeated");
        t += Duration::from_secs(3);
        assert_eq!(d.poll(t), Some(vec![]));
    }

    #[test]
    fn recent_speakers_are_ordered_by_when_they_last_spoke() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        let speak = |d: &mut SpeakerDetector, who: &str, t: &mut Instant| {
            for _ in 0..50 {
                d.on_level(who, 5, *t);
                *t += Duration::from_millis(20);
            }
            d.poll(*t);
            *t += Duration::from_secs(3);
            d.poll(*t);
        };
        speak(&mut d, "ana", &mut t);
        speak(&mut d, "bo", &mut t);
        speak(&mut d, "cy", &mut t);
        assert_eq!(d.recent(), ["cy", "bo", "ana"]);
        speak(&mut d, "ana", &mut t);
        assert_eq!(
            d.recent(),
            ["ana", "cy", "bo"],
            "speaking again moves to the front"
        );
        d.remove("cy");
        assert_eq!(d.recent(), ["ana", "bo"]);
    }

    #[test]
    fn reports_are_rate_limited() {
        let mut d = SpeakerDetector::default();
        let t = Instant::now();
        for i in 0..40 {
            d.on_level("ana", 5, t + Duration::from_millis(i * 20));
        }
        assert!(d.poll(t + Duration::from_millis(800)).is_some());
        for i in 0..40 {
            d.on_level("bo", 0, t + Duration::from_millis(800 + i * 5));
        }
        assert_eq!(d.poll(t + Duration::from_millis(1000)), None);
        assert!(d.poll(t + Duration::from_millis(1200)).is_some());
    }
}
