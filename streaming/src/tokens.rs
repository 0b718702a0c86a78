//! The single-use tokens the streaming RPCs hand out: each names one cached request, expires
//! after the TTL, and is gone once looked up. At most [`MAX_TOKENS`] wait at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// Requests waiting for their client at once (kubelet's and containerd's limit).
pub const MAX_TOKENS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "{MAX_TOKENS} streaming requests are already waiting for their clients; try again later"
    )]
    TooMany,
    #[error("make a streaming token: {0}")]
    Random(#[from] std::io::Error),
}

pub struct Tokens<T> {
    ttl: Duration,
    max: usize,
    waiting: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Tokens<T> {
    pub fn new(ttl: Duration) -> Self {
        Tokens {
            ttl,
            max: MAX_TOKENS,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Caches `request` under a new token.
    pub fn insert(&self, request: T) -> Result<String, TokenError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        waiting.retain(|_, (expires, _)| *expires > now);
        if waiting.len() >= self.max {
            return Err(TokenError::TooMany);
        }
        loop {
            let token = new_token()?;
            if !waiting.contains_key(&token) {
                waiting.insert(token.clone(), (now + self.ttl, request));
                return Ok(token);
            }
        }
    }

    /// The request behind `token`, once, if it has not expired.
    pub fn take(&self, token: &str) -> Option<T> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, request) = waiting.remove(token)?;
        (expires > Instant::now()).then_some(request)
    }

    pub fn len(&self) -> usize {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        waiting.retain(|_, (expires, _)| *expires > now);
        waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 8 URL-safe characters from 6 random bytes, as kubelet's streaming server makes them.
fn new_token() -> std::io::Result<String> {
    let bytes = berth_common::ids::random_bytes::<6>()?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_taken_once() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let t = tokens.insert(7).unwrap();
        assert_eq!(t.len(), 8);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(tokens.take(&t), Some(7));
        assert_eq!(tokens.take(&t), None);
        assert_eq!(tokens.take("nonsense"), None);
    }

    #[test]
    fn an_expired_token_is_gone() {
        let tokens = Tokens::new(Duration::ZERO);
        let t = tokens.insert(1).unwrap();
        assert_eq!(tokens.take(&t), None);
        assert!(tokens.is_empty());
    }

    #[test]
    fn the_thousand_and_first_waiting_request_is_refused() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let first = tokens.insert(0).unwrap();
        for i in 1..MAX_TOKENS {
            tokens.insert(i).unwrap();
        }
        assert!(matches!(
            tokens.insert(MAX_TOKENS),
            Err(TokenError::TooMany)
        ));
        // Taking one makes room again.
        tokens.take(&first).unwrap();
        assert!(tokens.insert(MAX_TOKENS).is_ok());
    }
}
