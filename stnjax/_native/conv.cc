// Direct 2D convolution and its kernel gradient as XLA FFI handlers for the CPU
// backend: NHWC input, HWIO kernel, stride 1, zero padding given as attributes.
//
// XLA:CPU runs convolutions through Eigen's general kernels. For the small layers of
// localization nets and tutorial classifiers (1-20 channels) their gradients cost
// 3-5x the forward pass; the kernel gradient becomes a convolution whose window is
// the whole output map, over a batch of one. Here:
//   forward          one task per block of output rows; a tile of output pixels and
//                    up to 32 output channels accumulate in registers.
//   kernel gradient  a fixed number of batch chunks, each summed into its own copy and
//                    the copies added in chunk order: deterministic for any number of
//                    threads.
// Padding is copied per image (or row block) into a small buffer that stays in
// cache, not materialized for the whole batch. The input gradient is the forward
// pass over the cotangent with the kernel flipped and transposed; the caller builds
// it from these two handlers.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Vector loops are compiled for AVX-512, AVX2 and baseline x86-64, chosen when the
// library loads; other compilers and CPUs get the baseline only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STNJAX_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STNJAX_MULTIVERSION
#endif

#define STNJAX_INLINE inline __attribute__((always_inline))

namespace {

// Output channels are computed in vectors of kLanes, up to kMaxVectors at a time.
// Written with GCC vector types: left to itself the auto-vectorizer picks the wrong
// loop for some channel counts.
constexpr int kLanes = 8;
constexpr int kMaxVectors = 4;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

struct ConvShape {
  int64_t batch, in_h, in_w, in_channels;  // The input as stored.
  int64_t pad_top, pad_left;               // Zeros before it (after it: implied).
  int64_t height, width;                   // The padded input.
  int64_t kernel_h, kernel_w, out_channels, out_h, out_w;
  int64_t image_size() const { return in_h * in_w * in_channels; }
  int64_t out_image_size() const { return out_h * out_w * out_channels; }
  int64_t row_size() const { return width * in_channels; }  // One padded input row.
  // One kernel row (all kx, ci for a ky) is contiguous in the input row: its length.
  int64_t row_span() const { return kernel_w * in_channels; }
  bool padded() const { return height != in_h || width != in_w; }
};

// Writes padded rows [first, last) of one image to `rows` (zeros outside the input).
void PadRows(const float* x, const ConvShape& s, int64_t first, int64_t last, float* rows) {
  std::fill(rows, rows + (last - first) * s.row_size(), 0.0f);
  const int64_t in_row = s.in_w * s.in_channels;
  for (int64_t r = std::max(first, s.pad_top); r < std::min(last, s.pad_top + s.in_h); ++r) {
    const float* source = x + (r - s.pad_top) * in_row;
    std::copy(source, source + in_row,
              rows + (r - first) * s.row_size() + s.pad_left * s.in_channels);
  }
}

// The part of the windows of output pixels [ox, ox + pixels) in row oy that overlaps
// the input: ky in [ky_begin, ky_end), j = kx * Ci + ci in [j_begin, j_end). The rest
// reads padding (zeros) and is skipped; for an input gradient (a full convolution)
// that is a third of the work.
struct Window {
  int64_t ky_begin, ky_end, j_begin, j_end;
};

Window Overlap(const ConvShape& s, int64_t oy, int64_t ox, int64_t pixels) {
  Window w;
  w.ky_begin = std::clamp<int64_t>(s.pad_top - oy, 0, s.kernel_h);
  w.ky_end = std::clamp<int64_t>(s.pad_top + s.in_h - oy, w.ky_begin, s.kernel_h);
  const int64_t kx_begin = std::clamp<int64_t>(s.pad_left - (ox + pixels - 1), 0, s.kernel_w);
  const int64_t kx_end = std::clamp<int64_t>(s.pad_left + s.in_w - ox, kx_begin, s.kernel_w);
  w.j_begin = kx_begin * s.in_channels;
  w.j_end = kx_end * s.in_channels;
  return w;
}

// Output channels [first, first + count) in `vectors` vectors per pixel, packed at
// `offset` as [kh, kw * Ci, vectors * kLanes] with zeros past `count`.
struct ChannelBlock {
  int64_t first, count, offset;
  int vectors;
};

struct PackedKernel {
  std::vector<ChannelBlock> blocks;
  std::vector<float> values;
};

PackedKernel Pack(const float* w, const ConvShape& s) {
  PackedKernel packed;
  const int64_t rows = s.kernel_h * s.row_span();
  int64_t offset = 0;
  for (int64_t first = 0; first < s.out_channels; first += kLanes * kMaxVectors) {
    ChannelBlock block;
    block.first = first;
    block.count = std::min<int64_t>(kLanes * kMaxVectors, s.out_channels - first);
    block.vectors = static_cast<int>((block.count + kLanes - 1) / kLanes);
    block.offset = offset;
    offset += rows * block.vectors * kLanes;
    packed.blocks.push_back(block);
  }
  packed.values.assign(offset, 0.0f);
  for (const ChannelBlock& block : packed.blocks) {
    const int64_t width = block.vectors * kLanes;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < block.count; ++c) {
        packed.values[block.offset + r * width + c] = w[r * s.out_channels + block.first + c];
      }
    }
  }
  return packed;
}

// One channel block of kPixels neighbouring output pixels; `in` points at the first
// pixel's window corner, `w` at the block's packed kernel.
template <int kPixels, int kVectors>
STNJAX_INLINE void ForwardPixels(const float* __restrict in, const float* __restrict w,
                                 float* __restrict out, const ConvShape& s, int64_t count,
                                 const Window& window) {
  const int64_t span = s.row_span(), channels = s.in_channels;
  Lanes acc[kPixels][kVectors] = {};
  for (int64_t ky = window.ky_begin; ky < window.ky_end; ++ky) {
    const float* in_ky = in + ky * s.row_size();
    const float* w_ky = w + ky * span * kVectors * kLanes;
    for (int64_t j = window.j_begin; j < window.j_end; ++j) {  // j = kx * in_channels + ci
      Lanes weights[kVectors];
      __builtin_memcpy(weights, w_ky + j * kVectors * kLanes, sizeof(weights));
#pragma GCC unroll 8
      for (int p = 0; p < kPixels; ++p) {
        const float a = in_ky[p * channels + j];
        for (int v = 0; v < kVectors; ++v) acc[p][v] += a * weights[v];
      }
    }
  }
  for (int p = 0; p < kPixels; ++p) {
    float values[kVectors * kLanes];
    __builtin_memcpy(values, acc[p], sizeof(values));
    std::copy(values, values + count, out + p * s.out_channels);
  }
}

// Output rows [first, first + rows) of one channel block; `x` points at the first
// input row they need, `y` at the first of them.
template <int kVectors>
STNJAX_MULTIVERSION void ForwardRows(const float* x, const float* w, float* y,
                                     const ConvShape& s, int64_t first, int64_t rows,
                                     int64_t count) {
  constexpr int kTile = 4;
  const int64_t channels = s.in_channels;
  for (int64_t oy = 0; oy < rows; ++oy) {
    const float* in = x + oy * s.row_size();
    float* out = y + oy * s.out_w * s.out_channels;
    int64_t ox = 0;
    for (; ox + kTile <= s.out_w; ox += kTile) {
      ForwardPixels<kTile, kVectors>(in + ox * channels, w, out + ox * s.out_channels, s,
                                     count, Overlap(s, first + oy, ox, kTile));
    }
    for (; ox < s.out_w; ++ox) {
      ForwardPixels<1, kVectors>(in + ox * channels, w, out + ox * s.out_channels, s, count,
                                 Overlap(s, first + oy, ox, 1));
    }
  }
}

// The single output channel of kPixels neighbouring pixels: each is a sum over ky of
// a contiguous dot product, and the pixels share each load of the kernel.
template <int kPixels>
STNJAX_INLINE void ForwardPixelsSingleOutput(const float* __restrict in,
                                             const float* __restrict w, float* __restrict out,
                                             const ConvShape& s, const Window& window) {
  const int64_t span = s.row_span(), channels = s.in_channels;
  Lanes acc[kPixels] = {};
  float tail[kPixels] = {};
  for (int64_t ky = window.ky_begin; ky < window.ky_end; ++ky) {
    const float* in_ky = in + ky * s.row_size();
    const float* wk = w + ky * span;
    int64_t j = window.j_begin;
    for (; j + kLanes <= window.j_end; j += kLanes) {
      Lanes weights;
      __builtin_memcpy(&weights, wk + j, sizeof(weights));
#pragma GCC unroll 8
      for (int p = 0; p < kPixels; ++p) {
        Lanes values;
        __builtin_memcpy(&values, in_ky + p * channels + j, sizeof(values));
        acc[p] += values * weights;
      }
    }
    for (; j < window.j_end; ++j) {
      for (int p = 0; p < kPixels; ++p) tail[p] += in_ky[p * channels + j] * wk[j];
    }
  }
  for (int p = 0; p < kPixels; ++p) {
    float sum = tail[p];
    for (int l = 0; l < kLanes; ++l) sum += acc[p][l];
    out[p] = sum;
  }
}

STNJAX_MULTIVERSION void ForwardRowsSingleOutput(const float* x, const float* w, float* y,
                                                 const ConvShape& s, int64_t first,
                                                 int64_t rows) {
  constexpr int kTile = 4;
  const int64_t channels = s.in_channels;
  for (int64_t oy = 0; oy < rows; ++oy) {
    const float* in = x + oy * s.row_size();
    float* out = y + oy * s.out_w;
    int64_t ox = 0;
    for (; ox + kTile <= s.out_w; ox += kTile) {
      ForwardPixelsSingleOutput<kTile>(in + ox * channels, w, out + ox, s,
                                       Overlap(s, first + oy, ox, kTile));
    }
    for (; ox < s.out_w; ++ox) {
      ForwardPixelsSingleOutput<1>(in + ox * channels, w, out + ox, s,
                                   Overlap(s, first + oy, ox, 1));
    }
  }
}

// Output rows [first, last) of one image, every channel.
void ForwardImageRows(const float* x, const float* w, const PackedKernel& packed, float* y,
                      const ConvShape& s, int64_t first, int64_t last) {
  std::vector<float> padded;
  const float* rows = x + first * s.row_size();
  if (s.padded()) {
    padded.resize((last - first + s.kernel_h - 1) * s.row_size());
    PadRows(x, s, first, last + s.kernel_h - 1, padded.data());
    rows = padded.data();
  }
  float* out = y + first * s.out_w * s.out_channels;
  if (s.out_channels == 1) return ForwardRowsSingleOutput(rows, w, out, s, first, last - first);
  for (const ChannelBlock& block : packed.blocks) {
    const float* wb = packed.values.data() + block.offset;
    float* ob = out + block.first;
    switch (block.vectors) {
      case 1: ForwardRows<1>(rows, wb, ob, s, first, last - first, block.count); break;
      case 2: ForwardRows<2>(rows, wb, ob, s, first, last - first, block.count); break;
      case 3: ForwardRows<3>(rows, wb, ob, s, first, last - first, block.count); break;
      default: ForwardRows<4>(rows, wb, ob, s, first, last - first, block.count); break;
    }
  }
}

// Sums, over one image's output pixels, kRows consecutive kernel rows (input values at
// offsets j0.. of each window row) times the cotangent's channels [c0, c0 + count),
// and adds them to `grad`. The rows share each load of the cotangent.
template <int kRows, int kBlock, bool kExact>
STNJAX_INLINE void KernelGradRows(const float* __restrict x, const float* __restrict g,
                                  float* __restrict grad, const ConvShape& s, int64_t ky,
                                  int64_t j0, int64_t c0, int64_t runtime_count) {
  const int64_t count = kExact ? kBlock : runtime_count;
  const int64_t channels = s.in_channels, out_channels = s.out_channels;
  const int64_t g_row = s.out_w * out_channels;
  float acc[kRows][kBlock] = {};
  for (int64_t oy = 0; oy < s.out_h; ++oy) {
    const float* in = x + (oy + ky) * s.row_size() + j0;
    const float* gv = g + oy * g_row + c0;
    for (int64_t ox = 0; ox < s.out_w; ++ox, in += channels, gv += out_channels) {
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const float a = in[r];
        for (int64_t c = 0; c < count; ++c) acc[r][c] += a * gv[c];
      }
    }
  }
  for (int r = 0; r < kRows; ++r) {
    float* target = grad + (ky * s.row_span() + j0 + r) * out_channels + c0;
    for (int64_t c = 0; c < count; ++c) target[c] += acc[r][c];
  }
}

// Adds one (padded) image's kernel gradient to `grad` ([kh, kw, ci, co]): for every
// kernel entry, the sum over output pixels of input value times output cotangent.
// kOut > 0 fixes the output channel count at compile time.
template <int kOut>
STNJAX_MULTIVERSION void AddKernelGrad(const float* x, const float* g, float* grad,
                                       const ConvShape& s) {
  constexpr int kBlock = kOut > 0 ? kOut : 32;
  constexpr bool kExact = kOut > 0;
  const int64_t span = s.row_span();
  for (int64_t c0 = 0; c0 < s.out_channels; c0 += kBlock) {
    const int64_t count = kExact ? kOut : std::min<int64_t>(kBlock, s.out_channels - c0);
    for (int64_t ky = 0; ky < s.kernel_h; ++ky) {
      // As many rows per pass over the image as fit in registers (few passes for
      // one-channel inputs, whose window rows are short).
      for (int64_t j0 = 0; j0 < span;) {
        const int64_t left = span - j0;
        const int rows = left >= 8 ? 8 : left >= 4 ? 4 : static_cast<int>(left);
        switch (rows) {
          case 8: KernelGradRows<8, kBlock, kExact>(x, g, grad, s, ky, j0, c0, count); break;
          case 4: KernelGradRows<4, kBlock, kExact>(x, g, grad, s, ky, j0, c0, count); break;
          case 3: KernelGradRows<3, kBlock, kExact>(x, g, grad, s, ky, j0, c0, count); break;
          case 2: KernelGradRows<2, kBlock, kExact>(x, g, grad, s, ky, j0, c0, count); break;
          default: KernelGradRows<1, kBlock, kExact>(x, g, grad, s, ky, j0, c0, count); break;
        }
        j0 += rows;
      }
    }
  }
}

void AddAnyKernelGrad(const float* x, const float* g, float* grad, const ConvShape& s) {
  switch (s.out_channels) {
    case 8: return AddKernelGrad<8>(x, g, grad, s);
    case 10: return AddKernelGrad<10>(x, g, grad, s);
    case 16: return AddKernelGrad<16>(x, g, grad, s);
    case 20: return AddKernelGrad<20>(x, g, grad, s);
    case 32: return AddKernelGrad<32>(x, g, grad, s);
    default: return AddKernelGrad<0>(x, g, grad, s);
  }
}

// The shape from x [B, H, W, Ci], the padding, the kernel extents and output channels.
ffi::Error MakeShape(ffi::Span<const int64_t> x_dims, int64_t pad_top, int64_t pad_bottom,
                     int64_t pad_left, int64_t pad_right, int64_t kernel_h,
                     int64_t kernel_w, int64_t out_channels, ConvShape* s) {
  if (x_dims.size() != 4) {
    return ffi::Error::InvalidArgument("stnjax conv2d: the input must be [B, H, W, C]");
  }
  if (pad_top < 0 || pad_bottom < 0 || pad_left < 0 || pad_right < 0) {
    return ffi::Error::InvalidArgument("stnjax conv2d: negative padding");
  }
  s->batch = x_dims[0];
  s->in_h = x_dims[1];
  s->in_w = x_dims[2];
  s->in_channels = x_dims[3];
  s->pad_top = pad_top;
  s->pad_left = pad_left;
  s->height = s->in_h + pad_top + pad_bottom;
  s->width = s->in_w + pad_left + pad_right;
  s->kernel_h = kernel_h;
  s->kernel_w = kernel_w;
  s->out_channels = out_channels;
  s->out_h = s->height - kernel_h + 1;
  s->out_w = s->width - kernel_w + 1;
  if (kernel_h < 1 || kernel_w < 1 || s->out_h < 1 || s->out_w < 1) {
    return ffi::Error::InvalidArgument("stnjax conv2d: the kernel is larger than the input");
  }
  return ffi::Error::Success();
}

ffi::Error Conv2dForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y,
                             int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                             int64_t pad_right) {
  const auto k = kernel.dimensions();
  if (k.size() != 4) return ffi::Error::InvalidArgument("stnjax conv2d: kernel rank");
  ConvShape s;
  if (auto error = MakeShape(x.dimensions(), pad_top, pad_bottom, pad_left, pad_right, k[0],
                             k[1], k[3], &s);
      error.failure()) {
    return error;
  }
  if (k[2] != s.in_channels || y->element_count() != s.batch * s.out_image_size()) {
    return ffi::Error::InvalidArgument("stnjax conv2d: mismatched sizes");
  }
  const float* xs = x.typed_data();
  const float* ws = kernel.typed_data();
  float* out = y->typed_data();
  // Small batches are split along rows too, so every thread has work.
  const int64_t blocks =
      std::min<int64_t>(s.out_h, std::max<int64_t>(1, 16 / std::max<int64_t>(s.batch, 1)));
  const int64_t rows_per_block = (s.out_h + blocks - 1) / blocks;
  // One output channel needs no packing (ForwardRowsSingleOutput reads the kernel).
  const PackedKernel packed = s.out_channels == 1 ? PackedKernel{} : Pack(ws, s);
  const PackedKernel* packed_kernel = &packed;
  stnjax::ParallelFor(pool, s.batch * blocks, [=](int64_t task) {
    const int64_t b = task / blocks, first = (task % blocks) * rows_per_block;
    const int64_t last = std::min<int64_t>(s.out_h, first + rows_per_block);
    if (first >= last) return;
    ForwardImageRows(xs + b * s.image_size(), ws, *packed_kernel,
                     out + b * s.out_image_size(), s, first, last);
  });
  return ffi::Error::Success();
}

ffi::Error Conv2dKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<ffi::F32> cotangent,
                                ffi::ResultBuffer<ffi::F32> grad, int64_t pad_top,
                                int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  const auto g = cotangent.dimensions();
  const auto x_dims = x.dimensions();
  if (g.size() != 4 || x_dims.size() != 4) {
    return ffi::Error::InvalidArgument("stnjax conv2d kernel gradient: ranks");
  }
  ConvShape s;
  if (auto error = MakeShape(x_dims, pad_top, pad_bottom, pad_left, pad_right,
                             x_dims[1] + pad_top + pad_bottom - g[1] + 1,
                             x_dims[2] + pad_left + pad_right - g[2] + 1, g[3], &s);
      error.failure()) {
    return error;
  }
  const int64_t kernel_size = s.kernel_h * s.row_span() * s.out_channels;
  if (g[0] != s.batch || grad->element_count() != kernel_size) {
    return ffi::Error::InvalidArgument("stnjax conv2d kernel gradient: mismatched sizes");
  }
  // A fixed chunk count (not the thread count) keeps the summation order, and so the
  // result, the same on every machine.
  constexpr int64_t kChunks = 8;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kChunks, s.batch));
  std::vector<float> partial(chunks * kernel_size, 0.0f);
  const float* xs = x.typed_data();
  const float* gs = cotangent.typed_data();
  float* partials = partial.data();
  stnjax::ParallelFor(pool, chunks, [=](int64_t chunk) {
    std::vector<float> padded(s.padded() ? s.height * s.row_size() : 0);
    const int64_t first = chunk * s.batch / chunks, last = (chunk + 1) * s.batch / chunks;
    for (int64_t b = first; b < last; ++b) {
      const float* image = xs + b * s.image_size();
      if (s.padded()) {
        PadRows(image, s, 0, s.height, padded.data());
        image = padded.data();
      }
      AddAnyKernelGrad(image, gs + b * s.out_image_size(), partials + chunk * kernel_size, s);
    }
  });
  float* out = grad->typed_data();
  std::copy(partials, partials + kernel_size, out);
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* part = partials + chunk * kernel_size;
    for (int64_t i = 0; i < kernel_size; ++i) out[i] += part[i];
  }
  return ffi::Error::Success();
}

// Both handlers take two float32 buffers and the padding, and return one buffer.
auto TwoBuffersAndPadding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .Ret<ffi::Buffer<ffi::F32>>()
      .Attr<int64_t>("pad_top")
      .Attr<int64_t>("pad_bottom")
      .Attr<int64_t>("pad_left")
      .Attr<int64_t>("pad_right");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnjaxConv2dForward, Conv2dForwardImpl, TwoBuffersAndPadding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(StnjaxConv2dKernelGrad, Conv2dKernelGradImpl,
                              TwoBuffersAndPadding());
