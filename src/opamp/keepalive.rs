//! A WebSocket session's timers (the first message, the keep-alive ping, its pong) and which is
//! due first: the session waits on one sleep for all of them.

use tokio::time::Instant;

use crate::deadline::earliest;

/// What a session's one sleep waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The first message has not come in time.
    FirstMessage,
    /// The last ping's pong has not come in time.
    Pong,
    /// A ping is to be sent.
    Ping,
}

/// The timer due first, and when. No ping is sent while one awaits its pong; on a tie the
/// earlier in `Due`'s order wins (the others fire on the next turn).
pub fn due(
    first_message_by: Option<Instant>,
    pong_by: Option<Instant>,
    next_ping: Instant,
) -> (Instant, Due) {
    let ping = pong_by.is_none().then_some(next_ping);
    earliest([
        (first_message_by, Due::FirstMessage),
        (pong_by, Due::Pong),
        (ping, Due::Ping),
    ])
    // A pong is awaited only instead of a ping, so one of the two is always there.
    .unwrap_or((next_ping, Due::Ping))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_ping_waits_for_the_last_pong_and_the_first_message_comes_first() {
        let now = Instant::now();
        let at = |s| now + Duration::from_secs(s);
        assert_eq!(due(None, None, at(30)), (at(30), Due::Ping));
        assert_eq!(due(Some(at(10)), None, at(30)), (at(10), Due::FirstMessage));
        assert_eq!(due(None, Some(at(40)), at(30)), (at(40), Due::Pong));
        assert_eq!(
            due(Some(at(40)), Some(at(40)), at(30)),
            (at(40), Due::FirstMessage)
        );
        assert_eq!(due(Some(at(30)), None, at(30)), (at(30), Due::FirstMessage));
    }
}
