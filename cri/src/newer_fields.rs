//! CRI fields newer than the bindings berth builds against (k8s-cri 0.11, the newest on
//! crates.io), read from a request's own bytes before tonic decodes it, since prost drops the
//! fields its messages do not declare. The messages here declare only those fields, with the CRI's
//! tag numbers, so decoding the same bytes with them yields exactly what the bindings lose.
//!
//! Today: `Mount.image_sub_path` (tag 10) of CreateContainer's mounts, handed to the handler in
//! the request's extensions as [`MountSubPaths`]; and on the way out, ContainerStatus's image
//! volume mounts get `ImageSpec.image_ref` (tag 20, the image's id: KEP-5365) and their
//! `image_sub_path`, which the handler leaves in the response's extensions as
//! [`StatusImageVolumes`]: its answer is decoded, and encoded again with the fields added.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use tower::{Layer, Service};

const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
const CONTAINER_STATUS: &str = "/runtime.v1.RuntimeService/ContainerStatus";

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

/// What ContainerStatus's image volumes report beyond the bindings: by container path, the
/// image's id and the sub path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusImageVolumes(pub Vec<ImageVolumeFields>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageVolumeFields {
    pub container_path: String,
    pub image_ref: String,
    pub sub_path: String,
}

/// A length-delimited field `tag` holding `bytes`.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// One uncompressed gRPC message of `body`; `None` for any other shape.
fn message_of(body: &[u8]) -> Option<&[u8]> {
    let (&compressed, rest) = body.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    rest[4..].get(..len)
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A ContainerStatusResponse message encoded again with `volumes`' fields in its mounts: each
/// mount's bytes are the bindings' encoding of it without its image, then its image (tag 9)
/// with `image_ref` (tag 20), then `image_sub_path` (tag 10); the status's are its encoding
/// without mounts, then the mounts (tag 14); the response's likewise with the status (tag 1).
fn with_image_volume_fields(message: &[u8], volumes: &StatusImageVolumes) -> Option<Vec<u8>> {
    let mut response = k8s_cri::v1::ContainerStatusResponse::decode(message).ok()?;
    let mut status = response.status.take()?;
    let mounts = std::mem::take(&mut status.mounts);
    let mut status_bytes = status.encode_to_vec();
    for mut mount in mounts {
        let extra = volumes
            .0
            .iter()
            .find(|v| v.container_path == mount.container_path);
        let image = mount.image.take();
        let mut bytes = mount.encode_to_vec();
        if let Some(image) = image {
            let mut image_bytes = image.encode_to_vec();
            if let Some(extra) = extra.filter(|e| !e.image_ref.is_empty()) {
                image_bytes.extend(field(20, extra.image_ref.as_bytes()));
            }
            bytes.extend(field(9, &image_bytes));
        }
        if let Some(extra) = extra.filter(|e| !e.sub_path.is_empty()) {
            bytes.extend(field(10, extra.sub_path.as_bytes()));
        }
        status_bytes.extend(field(14, &bytes));
    }
    let mut out = response.encode_to_vec();
    out.extend(field(1, &status_bytes));
    Some(out)
}

/// The sub-paths in one gRPC request body: a single uncompressed length-prefixed message. A
/// body of another shape is tonic's to refuse; it yields nothing here.
fn mount_sub_paths(body: &[u8]) -> Option<MountSubPaths> {
    let message = message_of(body)?;
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
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() == CONTAINER_STATUS {
            let answer = self.inner.call(request);
            return Box::pin(async move {
                match answer.await {
                    Ok(response) => Ok(add_status_fields(response).await),
                    Err(e) => Err(e),
                }
            });
        }
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

/// ContainerStatus's answer with [`StatusImageVolumes`] encoded into it, when the handler left
/// some; its trailers (grpc-status) kept. An answer of another shape goes out as it was.
async fn add_status_fields(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let Some(volumes) = response.extensions().get::<StatusImageVolumes>().cloned() else {
        return response;
    };
    let (parts, body) = response.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => {
            let status = tonic::Status::internal(format!("berth: ContainerStatus answer: {e}"));
            return status.into_http();
        }
    };
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes();
    let data = message_of(&bytes)
        .and_then(|m| with_image_volume_fields(m, &volumes))
        .map(|m| Bytes::from(framed(&m)))
        .unwrap_or(bytes);
    let mut frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(
        data,
    ))];
    if let Some(trailers) = trailers {
        frames.push(Ok(http_body::Frame::trailers(trailers)));
    }
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            config.extend(field(7, &mount));
        }
        request.config = None;
        let mut message = request.encode_to_vec();
        message.extend(field(2, &config));

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

#[cfg(test)]
mod status_tests {
    use super::*;

    /// Only what this test reads of a newer ContainerStatusResponse.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        #[prost(message, optional, tag = "1")]
        status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(message, repeated, tag = "14")]
        mounts: Vec<Mount>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Mount {
        #[prost(string, tag = "1")]
        container_path: String,
        #[prost(message, optional, tag = "9")]
        image: Option<Image>,
        #[prost(string, tag = "10")]
        image_sub_path: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Image {
        #[prost(string, tag = "1")]
        image: String,
        #[prost(string, tag = "20")]
        image_ref: String,
    }

    #[test]
    fn image_volume_mounts_get_image_ref_and_sub_path_and_keep_the_rest() {
        let response = k8s_cri::v1::ContainerStatusResponse {
            status: Some(k8s_cri::v1::ContainerStatus {
                id: "c1".into(),
                mounts: vec![
                    k8s_cri::v1::Mount {
                        container_path: "/data".into(),
                        host_path: "/srv".into(),
                        ..Default::default()
                    },
                    k8s_cri::v1::Mount {
                        container_path: "/vol".into(),
                        readonly: true,
                        image: Some(k8s_cri::v1::ImageSpec {
                            image: "busybox:1".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                log_path: "/logs/c1.log".into(),
                ..Default::default()
            }),
            info: [("k".to_string(), "v".to_string())].into(),
        };
        let volumes = StatusImageVolumes(vec![ImageVolumeFields {
            container_path: "/vol".into(),
            image_ref: "sha256:abc".into(),
            sub_path: "etc".into(),
        }]);
        let out = with_image_volume_fields(&response.encode_to_vec(), &volumes).unwrap();
        // The bindings read back what they wrote.
        let same = k8s_cri::v1::ContainerStatusResponse::decode(&out[..]).unwrap();
        assert_eq!(same, response);
        // A newer client reads the new fields too.
        let newer = Response::decode(&out[..]).unwrap().status.unwrap();
        assert_eq!(newer.id, "c1");
        assert_eq!(newer.mounts.len(), 2);
        assert_eq!(newer.mounts[0].image, None);
        assert_eq!(newer.mounts[0].image_sub_path, "");
        let image = newer.mounts[1].image.clone().unwrap();
        assert_eq!(
            (image.image.as_str(), image.image_ref.as_str()),
            ("busybox:1", "sha256:abc")
        );
        assert_eq!(newer.mounts[1].image_sub_path, "etc");
    }
}
