// Image gradient of bilinear sampling (zeros outside the image) as an XLA FFI
// handler for the CPU backend.
//
// XLA:CPU runs a scatter-add on one thread, and the scattered updates are
// temporaries (~60 MB a call at 16x224x224x3) that are mapped afresh and
// page-faulted on every call: this gradient was the slowest part of the sampler.
// Here each image's gradient is accumulated by one task straight into the result (no
// atomics, the same order on every run: deterministic), and images are spread over
// XLA's intra-op thread pool.

#include <algorithm>
#include <cstdint>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t batch, points, height, width, channels;
};

// Adds weight * g to the `channels` values at target; Channels > 0 fixes the count
// at compile time so the common 1- and 3-channel loops unroll.
template <int64_t Channels>
inline void AddScaled(float* target, const float* g, float weight, int64_t channels) {
  if constexpr (Channels > 0) channels = Channels;
  for (int64_t c = 0; c < channels; ++c) target[c] += weight * g[c];
}

// Scatters weight_k * cotangent into the four corners of every point of one image.
template <int64_t Channels>
void AccumulateImage(const float* x, const float* y, const float* cotangent,
                     float* grad, const Shape& s) {
  const int64_t channels = s.channels, row_stride = s.width * channels;
  std::fill(grad, grad + s.height * row_stride, 0.0f);
  for (int64_t p = 0; p < s.points; ++p) {
    const float xf = x[p], yf = y[p];
    // A point a pixel or more outside the image touches no pixel; NaN fails too.
    if (!(xf > -1.0f && xf < s.width && yf > -1.0f && yf < s.height)) continue;
    int64_t left = static_cast<int64_t>(xf), top = static_cast<int64_t>(yf);
    left -= left > xf;  // Truncation to floor for negative values.
    top -= top > yf;
    const float right = xf - left, bottom = yf - top;
    const bool left_in = left >= 0, right_in = left + 1 < s.width;
    const bool top_in = top >= 0, bottom_in = top + 1 < s.height;
    const float* g = cotangent + p * channels;
    for (int row = 0; row < 2; ++row) {
      if (!(row == 0 ? top_in : bottom_in)) continue;
      const float row_weight = row == 0 ? 1 - bottom : bottom;
      const int64_t at = (top + row) * row_stride + left * channels;  // Column may be -1.
      if (left_in) AddScaled<Channels>(grad + at, g, (1 - right) * row_weight, channels);
      if (right_in) AddScaled<Channels>(grad + at + channels, g, right * row_weight, channels);
    }
  }
}

void AccumulateAnyImage(const float* x, const float* y, const float* cotangent,
                        float* grad, const Shape& s) {
  switch (s.channels) {
    case 1: return AccumulateImage<1>(x, y, cotangent, grad, s);
    case 3: return AccumulateImage<3>(x, y, cotangent, grad, s);
    default: return AccumulateImage<0>(x, y, cotangent, grad, s);
  }
}

ffi::Error BilinearImageGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> y,
                                 ffi::Buffer<ffi::F32> cotangent,
                                 ffi::ResultBuffer<ffi::F32> grad) {
  const auto grad_dims = grad->dimensions();
  const auto x_dims = x.dimensions();
  if (grad_dims.size() < 3 || x_dims.size() == 0) {
    return ffi::Error::InvalidArgument("bilinear image gradient: bad ranks");
  }
  Shape s;
  s.channels = grad_dims[grad_dims.size() - 1];
  s.width = grad_dims[grad_dims.size() - 2];
  s.height = grad_dims[grad_dims.size() - 3];
  s.points = x_dims.back();
  const int64_t image_size = s.height * s.width * s.channels;
  s.batch = image_size == 0 ? 0 : grad->element_count() / image_size;
  if (x.element_count() != s.batch * s.points ||
      y.element_count() != s.batch * s.points ||
      cotangent.element_count() != s.batch * s.points * s.channels) {
    return ffi::Error::InvalidArgument("bilinear image gradient: mismatched sizes");
  }
  const float* xs = x.typed_data();
  const float* ys = y.typed_data();
  const float* gs = cotangent.typed_data();
  float* out = grad->typed_data();
  stnjax::ParallelFor(pool, s.batch, [=](int64_t b) {
    AccumulateAnyImage(xs + b * s.points, ys + b * s.points, gs + b * s.points * s.channels,
                       out + b * image_size, s);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnjaxBilinearImageGrad, BilinearImageGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
