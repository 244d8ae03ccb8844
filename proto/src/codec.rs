//! The protobuf codec of every generated client and server: prost's, except that a
//! message that does not decode (a string field that is not UTF-8, a truncated field) is
//! the caller's mistake, `INVALID_ARGUMENT` naming the field, not `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The codec tonic-build is told to use (encode `T`, decode `U`): prost's encoder and
/// [`CallerDecoder`].
#[derive(Debug, Clone)]
pub struct TeesqlCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for TeesqlCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for TeesqlCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CallerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CallerDecoder(ProstDecoder::default())
    }
}

/// prost's decoder, with decode errors reported as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct CallerDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CallerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            // prost names the message and field: "failed to decode Protobuf message:
            // VerifyPeerRequest.user: invalid string value: data is not UTF-8 encoded".
            Status::invalid_argument(s.message().to_string())
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
