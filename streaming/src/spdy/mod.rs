//! SPDY/3.1, the framing kubelet, crictl and critest use for streaming: the server side only.

pub mod frame;
pub mod headers;
pub mod session;

pub use headers::{get as header, Headers};
pub use session::{Closed, End, IncomingStream, Limits, Session, StreamReader, StreamWriter};
