//! CRI fields newer than the bindings berth builds against (k8s-cri 0.11, the newest on
//! crates.io), read from a request's own bytes before tonic decodes it, since prost drops the
//! fields its messages do not declare. The messages here declare only those fields, with the CRI's
//! tag numbers, so decoding the same bytes with them yields exactly what the bindings lose.
//!
//! Today: `Mount.image_sub_path` (tag 10) of CreateContainer's mounts, handed to the handler in
//! the request's extensions as [`MountSubPaths`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use tower::{Layer, Service};

const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";

#[derive(Clone, PartialEq, prost::Message)]
struct CreateContainerFields {
    #[prost(message, optional, tag = "2")]
    config: Option<ContainerConfigFields>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ContainerConfigFields {
    #[prost(message, repeated, tag = "7")]
    mounts: Vec<MountFields>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MountFields {
    #[prost(string, tag = "10")]
    image_sub_path: String,
}

/// `Mount.image_sub_path` of each of CreateContainer's mounts, in the request's order ("" for a
/// mount without one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountSubPaths(pub Vec<String>);

/// The sub-paths in one gRPC request body: a single uncompressed length-prefixed message. A
/// body of another shape is tonic's to refuse; it yields nothing here.
fn mount_sub_paths(body: &[u8]) -> Option<MountSubPaths> {
    let (&compressed, rest) = body.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let message = rest[4..].get(..len)?;
    let fields = CreateContainerFields::decode(message).ok()?;
    let paths: Vec<String> = fields
        .config?
        .mounts
        .into_iter()
        .map(|m| m.image_sub_path)
        .collect();
    paths
        .iter()
        .any(|p| !p.is_empty())
        .then_some(MountSubPaths(paths))
}

/// Reads the newer fields of the RPCs above and leaves every other request as it is.
#[derive(Debug, Clone, Default)]
pub struct NewerFieldsLayer;

impl<S> Layer<S> for NewerFieldsLayer {
    type Service = NewerFields<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NewerFields { inner }
    }
}

#[derive(Debug, Clone)]
pub struct NewerFields<S> {
    inner: S,
}

impl<S> Service<http::Request<tonic::body::Body>> for NewerFields<S>
where
    S: Service<http::Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != CREATE_CONTAINER {
            return Box::pin(self.inner.call(request));
        }
        // The ready service answers this request; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // A body that fails to arrive reaches tonic empty, which it refuses as such.
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_else(|_| Bytes::new());
            if let Some(paths) = mount_sub_paths(&bytes) {
                parts.extensions.insert(paths);
            }
            let body = tonic::body::Body::new(http_body_util::Full::new(bytes));
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn image_sub_path_is_read_from_the_bytes_the_bindings_decode_without_it() {
        // A CreateContainer request as a newer client encodes it: the bindings' fields plus
        // Mount.image_sub_path (tag 10) on the second mount.
        let mut request = k8s_cri::v1::CreateContainerRequest {
            pod_sandbox_id: "pod".into(),
            config: Some(k8s_cri::v1::ContainerConfig {
                mounts: vec![
                    k8s_cri::v1::Mount {
                        container_path: "/a".into(),
                        ..Default::default()
                    },
                    k8s_cri::v1::Mount {
                        container_path: "/b".into(),
                        readonly: true,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            sandbox_config: None,
        };
        let newer = CreateContainerFields {
            config: Some(ContainerConfigFields {
                mounts: vec![
                    MountFields::default(),
                    MountFields {
                        image_sub_path: "etc".into(),
                    },
                ],
            }),
        };
        // A message's bytes are its fields in any order: the newer client's second mount is the
        // bindings' encoding followed by tag 10, and the mounts go into the config, the config
        // into the request, as length-delimited fields.
        let mut second = request.config.as_ref().unwrap().mounts[1].encode_to_vec();
        second.extend(newer.config.as_ref().unwrap().mounts[1].encode_to_vec());
        let first = request.config.as_ref().unwrap().mounts[0].encode_to_vec();
        request.config.as_mut().unwrap().mounts.clear();
        let mut config = request.config.as_ref().unwrap().encode_to_vec();
        for mount in [first, second] {
            config.push(7 << 3 | 2);
            prost::encoding::encode_varint(mount.len() as u64, &mut config);
            config.extend(mount);
        }
        request.config = None;
        let mut message = request.encode_to_vec();
        message.push(2 << 3 | 2);
        prost::encoding::encode_varint(config.len() as u64, &mut message);
        message.extend(config);

        let decoded = k8s_cri::v1::CreateContainerRequest::decode(&message[..]).unwrap();
        assert_eq!(decoded.config.unwrap().mounts[1].container_path, "/b");
        assert_eq!(
            mount_sub_paths(&framed(&message)),
            Some(MountSubPaths(vec![String::new(), "etc".into()]))
        );
        // No sub-path anywhere, a compressed body, a cut one: nothing.
        let plain = k8s_cri::v1::CreateContainerRequest::default().encode_to_vec();
        assert_eq!(mount_sub_paths(&framed(&plain)), None);
        let mut compressed = framed(&message);
        compressed[0] = 1;
        assert_eq!(mount_sub_paths(&compressed), None);
        assert_eq!(mount_sub_paths(&framed(&message)[..10]), None);
    }
}
