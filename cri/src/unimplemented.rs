//! RPCs that are not built yet answer `Unimplemented` with a message naming them, never a stub.

/// The status returned by an RPC berth does not implement yet.
pub(crate) fn unimplemented(rpc: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("berth: {rpc} is not implemented yet"))
}

/// Implements a CRI service trait: the listed handlers delegate to their modules, and every RPC in
/// the `unimplemented` list answers `Unimplemented`. (k8s-cri's traits have no default methods.)
macro_rules! cri_service {
    (
        impl $trait:ident for $ty:ty {
            $($item:item)*
        }
        unimplemented {
            $($method:ident => $rpc:ident($req:ty) -> $resp:ty;)*
        }
    ) => {
        #[tonic::async_trait]
        impl $trait for $ty {
            $($item)*
            $(
                async fn $method(
                    &self,
                    _request: tonic::Request<$req>,
                ) -> Result<tonic::Response<$resp>, tonic::Status> {
                    Err($crate::unimplemented::unimplemented(stringify!($rpc)))
                }
            )*
        }
    };
}

pub(crate) use cri_service;
