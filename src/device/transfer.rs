//! Host <-> device copies for one worker thread. On a GPU they go through page-locked (pinned) host
//! buffers owned by this `Transfer`, grown on demand and reused batch after batch, so the DMA engine
//! reads and writes them directly (pageable memory costs an extra staging copy inside the driver and
//! cannot overlap with compute). On the CPU an upload is a move into a candle tensor and a download a
//! plain copy. Every copy is complete when the call returns: an upload made on a worker's staging
//! thread may be handed to its compute thread without further synchronisation.
//! No batching or model logic here.

use candle_core::{Device, Shape, Tensor as CT, WithDType};

use crate::tensor::{Tensor, TensorError};

/// Element types a model uploads (token ids, features, masks).
pub trait Upload: WithDType + sealed::Pinned {}
impl Upload for f32 {}
impl Upload for u32 {}

/// Pinned buffers up to this size survive `Transfer::release` (a MiniLM batch of 64 x 512 token ids
/// is 128 KiB).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub const KEEP_PINNED_BYTES: usize = 1 << 20;

/// One thread's copy engine for one device.
pub struct Transfer {
    device: Device,
    #[cfg(feature = "cuda")]
    pinned: cuda::Buffers,
}

impl Transfer {
    /// Nothing is allocated until the first copy.
    pub fn new(device: &Device) -> Transfer {
        Transfer {
            device: device.clone(),
            #[cfg(feature = "cuda")]
            pinned: cuda::Buffers::default(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `data` as a tensor of `shape` on this transfer's device.
    pub fn upload<T: Upload>(
        &mut self,
        data: Vec<T>,
        shape: impl Into<Shape>,
    ) -> candle_core::Result<CT> {
        match &self.device {
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => cuda::upload(dev, &mut self.pinned, &data, shape.into()),
            _ => CT::from_vec(data, shape, &self.device),
        }
    }

    /// A device tensor back on the host as the named tensor `name` (f32 through the pinned buffer
    /// on a GPU; other dtypes through candle's own copy).
    pub fn download(&mut self, name: &str, t: &CT) -> Result<Tensor, TensorError> {
        match t.device() {
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) if t.dtype() == candle_core::DType::F32 => {
                let data = cuda::download_f32(dev, &mut self.pinned, t)?;
                Ok(Tensor::new(
                    name,
                    t.dims().to_vec(),
                    crate::tensor::TensorData::F32(data),
                ))
            }
            _ => Tensor::from_candle(name, t),
        }
    }

    /// Frees the pinned buffers larger than `KEEP_PINNED_BYTES` (an idle worker calls this; the
    /// next copy that needs more allocates again). Small ones stay: they cost little, and
    /// re-allocating pinned memory is slow and may synchronise the device.
    pub fn release(&mut self) {
        #[cfg(feature = "cuda")]
        self.pinned.release_above(KEEP_PINNED_BYTES);
    }

    /// Bytes of pinned host memory this transfer holds (0 on the CPU).
    pub fn pinned_bytes(&self) -> usize {
        #[cfg(feature = "cuda")]
        {
            self.pinned.bytes()
        }
        #[cfg(not(feature = "cuda"))]
        0
    }
}

mod sealed {
    #[cfg(feature = "cuda")]
    use candle_core::cuda_backend::{
        cudarc::driver::{DeviceRepr, ValidAsZeroBits},
        CudaDType,
    };

    /// Which of a `Transfer`'s pinned buffers holds an element type.
    #[cfg(feature = "cuda")]
    pub trait Pinned: Sized + DeviceRepr + ValidAsZeroBits + CudaDType {
        fn buffer(b: &mut super::cuda::Buffers) -> &mut super::cuda::Buffer<Self>;
    }
    #[cfg(not(feature = "cuda"))]
    pub trait Pinned: Sized {}
    impl Pinned for f32 {
        #[cfg(feature = "cuda")]
        fn buffer(b: &mut super::cuda::Buffers) -> &mut super::cuda::Buffer<f32> {
            &mut b.f32
        }
    }
    impl Pinned for u32 {
        #[cfg(feature = "cuda")]
        fn buffer(b: &mut super::cuda::Buffers) -> &mut super::cuda::Buffer<u32> {
            &mut b.u32
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{
        result, sys, CudaContext, DevicePtr, DevicePtrMut, DeviceRepr, PinnedHostSlice,
        ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDevice, CudaStorage};
    use candle_core::op::BackpropOp;
    use candle_core::{Shape, Storage, Tensor as CT};
    use std::sync::Arc;

    use super::Upload;

    /// A grow-only pinned host buffer.
    pub struct Buffer<T> {
        slice: Option<PinnedHostSlice<T>>,
    }

    impl<T> Default for Buffer<T> {
        fn default() -> Self {
            Buffer { slice: None }
        }
    }

    impl<T: DeviceRepr + ValidAsZeroBits> Buffer<T> {
        /// At least `len` elements of pinned memory (allocated in powers of two so that varying
        /// batch sizes settle on one allocation quickly).
        fn at_least(
            &mut self,
            ctx: &Arc<CudaContext>,
            len: usize,
        ) -> candle_core::Result<&mut [T]> {
            if self.slice.as_ref().is_none_or(|s| s.len() < len) {
                self.slice = None; // free the old one first
                let cap = len.next_power_of_two().max(1024);
                // SAFETY: the memory is uninitialised; it is only ever written before it is read
                // (uploads fill `..len` before copying `..len`, downloads copy into it first).
                // Default (not write-combined) flags: downloads read it back on the host.
                let s = unsafe { ctx.alloc_pinned_with_flags::<T>(cap, 0) }
                    .map_err(candle_core::Error::wrap)?;
                self.slice = Some(s);
            }
            let s = self
                .slice
                .as_mut()
                .expect("allocated above. This is a bug.");
            Ok(&mut s.as_mut_slice().map_err(candle_core::Error::wrap)?[..len])
        }

        fn bytes(&self) -> usize {
            self.slice.as_ref().map_or(0, |s| s.num_bytes())
        }

        fn release_above(&mut self, max_bytes: usize) {
            if self.bytes() > max_bytes {
                self.slice = None;
            }
        }
    }

    #[derive(Default)]
    pub struct Buffers {
        pub f32: Buffer<f32>,
        pub u32: Buffer<u32>,
    }

    impl Buffers {
        pub fn bytes(&self) -> usize {
            self.f32.bytes() + self.u32.bytes()
        }

        pub fn release_above(&mut self, max_bytes: usize) {
            self.f32.release_above(max_bytes);
            self.u32.release_above(max_bytes);
        }
    }

    /// Host -> pinned -> device on the calling thread's stream, waited for before returning.
    pub fn upload<T: Upload>(
        dev: &CudaDevice,
        bufs: &mut Buffers,
        data: &[T],
        shape: Shape,
    ) -> candle_core::Result<CT> {
        if shape.elem_count() != data.len() {
            candle_core::bail!("upload: {} elements for shape {shape:?}", data.len());
        }
        let stream = dev.cuda_stream();
        let host = T::buffer(bufs).at_least(stream.context(), data.len())?;
        host.copy_from_slice(data);
        // SAFETY: `alloc` leaves device memory uninitialised; the copy below writes all of it.
        let mut slice = unsafe { dev.alloc::<T>(data.len().max(1)) }?;
        {
            let (dst, _record) = slice.device_ptr_mut(&stream);
            // SAFETY: `dst` holds `host.len()` elements; `host` is pinned and stays alive and
            // unmodified until the synchronize below has returned.
            unsafe { result::memcpy_htod_async(dst, &*host, stream.cu_stream()) }
                .map_err(candle_core::Error::wrap)?;
        }
        stream.synchronize().map_err(candle_core::Error::wrap)?;
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
        Ok(CT::from_storage(storage, shape, BackpropOp::none(), false))
    }

    /// Device -> pinned -> `Vec` for an f32 tensor, on the calling thread's stream.
    pub fn download_f32(
        dev: &CudaDevice,
        bufs: &mut Buffers,
        t: &CT,
    ) -> candle_core::Result<Vec<f32>> {
        let t = t.contiguous()?;
        let n = t.elem_count();
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else {
            candle_core::bail!("download: not a CUDA tensor");
        };
        let slice = cs.as_cuda_slice::<f32>()?;
        let offset = layout.start_offset();
        let stream = dev.cuda_stream();
        let host = bufs.f32.at_least(stream.context(), n)?;
        {
            let (src, _record) = slice.device_ptr(&stream);
            let src: sys::CUdeviceptr = src + (offset * std::mem::size_of::<f32>()) as u64;
            // SAFETY: `src` points at `n` f32 inside `slice` (contiguous layout from `offset`);
            // `host` is pinned, holds `n` elements and is only read after the synchronize below.
            unsafe { result::memcpy_dtoh_async(host, src, stream.cu_stream()) }
                .map_err(candle_core::Error::wrap)?;
        }
        stream.synchronize().map_err(candle_core::Error::wrap)?;
        Ok(host.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_f32(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-10.0f32..10.0)).collect()
    }

    /// Uploads and downloads on `device` return the same values (exactly: these are copies), for
    /// odd sizes, a size below one already seen (the grown buffer is reused), and a strided and an
    /// offset view on the way back.
    fn round_trips(device: &Device) {
        let mut x = Transfer::new(device);
        for (i, n) in [1usize, 33, 1000, 31, 4099].into_iter().enumerate() {
            let data = random_f32(n, i as u64);
            let t = x.upload(data.clone(), n).unwrap();
            assert_eq!(t.device().location(), device.location());
            let back = x.download("y", &t).unwrap();
            assert_eq!(back.name, "y");
            assert_eq!(back.shape, vec![n]);
            assert_eq!(back.data, crate::tensor::TensorData::F32(data));
            let ids: Vec<u32> = (0..n as u32).map(|v| v.wrapping_mul(2654435761)).collect();
            let t = x.upload(ids.clone(), (1, n)).unwrap();
            assert_eq!(t.to_vec2::<u32>().unwrap(), vec![ids]);
        }
        let data = random_f32(6 * 7, 9);
        let m = x.upload(data.clone(), (6, 7)).unwrap();
        let views = [
            m.t().unwrap(),
            m.narrow(0, 2, 3).unwrap(),
            m.narrow(1, 3, 4).unwrap(),
        ];
        for v in views {
            let want = Tensor::from_candle("y", &v.to_device(&Device::Cpu).unwrap()).unwrap();
            assert_eq!(x.download("y", &v).unwrap(), want);
        }
    }

    #[test]
    fn upload_download_on_cpu_round_trip_exactly() {
        round_trips(&Device::Cpu);
        assert_eq!(Transfer::new(&Device::Cpu).pinned_bytes(), 0);
    }

    #[test]
    fn upload_with_wrong_element_count_is_an_error() {
        let mut x = Transfer::new(&Device::Cpu);
        assert!(x.upload(vec![1.0f32; 5], (2, 3)).is_err());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn upload_download_on_cuda_round_trip_exactly_through_pinned_buffers() {
        let Some(dev) = crate::ops::testing::cuda_device("transfer round trip") else {
            return;
        };
        round_trips(&dev);
        let mut x = Transfer::new(&dev);
        x.upload(vec![1.0f32; 3000], 3000).unwrap();
        assert!(x.pinned_bytes() >= 3000 * 4, "pinned {}", x.pinned_bytes());
        x.release(); // small: kept
        assert!(x.pinned_bytes() >= 3000 * 4, "pinned {}", x.pinned_bytes());
        let big = KEEP_PINNED_BYTES / 4 + 1;
        x.upload(vec![1.0f32; big], big).unwrap();
        assert!(x.pinned_bytes() > KEEP_PINNED_BYTES);
        x.release(); // large: freed
        assert_eq!(x.pinned_bytes(), 0);
        let data = random_f32(77, 5); // the same transfer allocates again after a release
        let t = x.upload(data.clone(), 77).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), data);
        assert!(x.pinned_bytes() > 0);
    }
}
