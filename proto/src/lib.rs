//! Protobuf/gRPC definitions of the inference sidecar (`vsr.inference.v1`).
//!
//! * default features: prost message types only; compiles for `wasm32-wasip1`
//!   so the proxy-wasm filter can encode requests and decode responses.
//! * `server`: the tonic service trait (`inference_server`) and the file
//!   descriptor set for gRPC reflection.
//! * `client`: the tonic client (`inference_client`).

#![forbid(unsafe_code)]

pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/vsr.inference.v1.rs"));

    /// Fully-qualified gRPC service name, e.g. for the health service.
    pub const SERVICE_NAME: &str = "vsr.inference.v1.Inference";

    /// Encoded `FileDescriptorSet` of this package, for tonic-reflection.
    #[cfg(feature = "server")]
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/vsr_inference_v1_descriptor.bin"));
}
