// 3x3x3 kernels (padding 1, cross-correlation) applied to many one-channel maps, and the kernels' weight gradient,
// computed in fp32 (fp64 for fp64 maps) by plain loops that the compiler vectorises along x.
//
// Why: torch runs these as a depthwise convolution whose oneDNN path spends most of its time reordering the maps
// into a blocked layout and back, and a depthwise weight gradient that is one of its slow paths; both are a few
// FLOPs per byte, so one pass over the maps in their own layout is what they should cost.
//
// Work is split into a fixed number of blocks of (map, slice) pairs that depends on the sizes only, so the weight
// gradient's summation order, and so its rounding, does not depend on the thread count.
#include <ATen/OpMathType.h>
#include <torch/extension.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kTaps = 27;
constexpr int64_t kSlicesPerBlock = 8;

// Runs body(block) for blocks [0, count) on up to at::get_num_threads() threads (torch's intra-op setting).
template <typename Body>
void for_each_block(int64_t count, const Body& body) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count));
  if (threads == 1) {
    for (int64_t block = 0; block < count; ++block) body(block);
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  auto run_share = [&](int64_t worker) {
    for (int64_t block = worker; block < count; block += threads) body(block);
  };
  for (int64_t worker = 1; worker < threads; ++worker) workers.emplace_back(run_share, worker);
  run_share(0);
  for (auto& thread : workers) thread.join();
}

// The three slices z-1, z, z+1 of one map, converted to acc_t and zero-padded by one voxel in y and x:
// planes[a][y + b][x + c] is map[z + a - 1][y + b - 1][x + c - 1], zero outside the map.
template <typename scalar_t, typename acc_t>
void load_planes(const scalar_t* map, int64_t depth, int64_t height, int64_t width, int64_t z, acc_t* planes) {
  const int64_t padded_width = width + 2, plane_size = (height + 2) * padded_width;
  std::fill(planes, planes + 3 * plane_size, acc_t(0));
  for (int64_t a = 0; a < 3; ++a) {
    const int64_t source_z = z + a - 1;
    if (source_z < 0 || source_z >= depth) continue;
    for (int64_t y = 0; y < height; ++y) {
      const scalar_t* row = map + (source_z * height + y) * width;
      acc_t* target = planes + a * plane_size + (y + 1) * padded_width + 1;
      for (int64_t x = 0; x < width; ++x) target[x] = static_cast<acc_t>(row[x]);
    }
  }
}

template <typename scalar_t>
std::vector<torch::Tensor> forward_typed(const torch::Tensor& maps, const torch::Tensor& kernels) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t count = maps.size(0), depth = maps.size(1), height = maps.size(2), width = maps.size(3);
  const int64_t num_kernels = kernels.size(0), padded_width = width + 2, plane_size = (height + 2) * padded_width;
  const torch::Tensor taps_tensor = kernels.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* taps = taps_tensor.data_ptr<acc_t>();
  std::vector<torch::Tensor> outputs;
  std::vector<scalar_t*> output_data;
  for (int64_t s = 0; s < num_kernels; ++s) {
    outputs.push_back(torch::empty_like(maps));
    output_data.push_back(outputs.back().data_ptr<scalar_t>());
  }
  const scalar_t* source = maps.data_ptr<scalar_t>();
  const int64_t slices = count * depth, blocks = (slices + kSlicesPerBlock - 1) / kSlicesPerBlock;
  for_each_block(blocks, [&](int64_t block) {
    std::vector<acc_t> planes(3 * plane_size), sums(width);
    const int64_t last = std::min(slices, (block + 1) * kSlicesPerBlock);
    for (int64_t slice = block * kSlicesPerBlock; slice < last; ++slice) {
      const int64_t n = slice / depth, z = slice % depth;
      load_planes(source + n * depth * height * width, depth, height, width, z, planes.data());
      for (int64_t s = 0; s < num_kernels; ++s) {
        const acc_t* kernel = taps + s * kTaps;
        scalar_t* out = output_data[s] + (n * depth + z) * height * width;
        for (int64_t y = 0; y < height; ++y) {
          acc_t* sum = sums.data();
          std::fill(sum, sum + width, acc_t(0));
          for (int64_t a = 0; a < 3; ++a) {
            for (int64_t b = 0; b < 3; ++b) {
              const acc_t* row = planes.data() + a * plane_size + (y + b) * padded_width;
              const acc_t k0 = kernel[(a * 3 + b) * 3], k1 = kernel[(a * 3 + b) * 3 + 1];
              const acc_t k2 = kernel[(a * 3 + b) * 3 + 2];
              for (int64_t x = 0; x < width; ++x) sum[x] += k0 * row[x] + k1 * row[x + 1] + k2 * row[x + 2];
            }
          }
          scalar_t* out_row = out + y * width;
          for (int64_t x = 0; x < width; ++x) out_row[x] = static_cast<scalar_t>(sum[x]);
        }
      }
    }
  });
  return outputs;
}

template <typename scalar_t>
torch::Tensor weight_gradient_typed(const torch::Tensor& maps, const std::vector<torch::Tensor>& grads) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t count = maps.size(0), depth = maps.size(1), height = maps.size(2), width = maps.size(3);
  const int64_t num_kernels = static_cast<int64_t>(grads.size()), padded_width = width + 2;
  const int64_t plane_size = (height + 2) * padded_width, sums_per_block = num_kernels * kTaps;
  std::vector<const scalar_t*> grad_data;
  for (const auto& grad : grads) grad_data.push_back(grad.data_ptr<scalar_t>());
  const scalar_t* source = maps.data_ptr<scalar_t>();
  const int64_t slices = count * depth, blocks = (slices + kSlicesPerBlock - 1) / kSlicesPerBlock;
  // one row of partial sums per block, summed in block order at the end: the same result on any thread count
  std::vector<double> block_sums(blocks * sums_per_block, 0.0);
  for_each_block(blocks, [&](int64_t block) {
    std::vector<acc_t> planes(3 * plane_size), grad_row(width), lanes(sums_per_block * width, acc_t(0));
    const int64_t last = std::min(slices, (block + 1) * kSlicesPerBlock);
    for (int64_t slice = block * kSlicesPerBlock; slice < last; ++slice) {
      const int64_t n = slice / depth, z = slice % depth;
      load_planes(source + n * depth * height * width, depth, height, width, z, planes.data());
      for (int64_t s = 0; s < num_kernels; ++s) {
        const scalar_t* grad = grad_data[s] + (n * depth + z) * height * width;
        for (int64_t y = 0; y < height; ++y) {
          for (int64_t x = 0; x < width; ++x) grad_row[x] = static_cast<acc_t>(grad[y * width + x]);
          for (int64_t a = 0; a < 3; ++a) {
            for (int64_t b = 0; b < 3; ++b) {
              const acc_t* row = planes.data() + a * plane_size + (y + b) * padded_width;
              acc_t* lane = lanes.data() + (s * kTaps + (a * 3 + b) * 3) * width;
              for (int64_t c = 0; c < 3; ++c, lane += width) {
                for (int64_t x = 0; x < width; ++x) lane[x] += grad_row[x] * row[x + c];
              }
            }
          }
        }
      }
    }
    double* target = block_sums.data() + block * sums_per_block;
    for (int64_t i = 0; i < sums_per_block; ++i) {
      double total = 0.0;
      for (int64_t x = 0; x < width; ++x) total += static_cast<double>(lanes[i * width + x]);
      target[i] = total;
    }
  });
  torch::Tensor result = torch::zeros({num_kernels, 3, 3, 3}, maps.options().dtype(torch::kFloat64));
  double* out = result.data_ptr<double>();
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t i = 0; i < sums_per_block; ++i) out[i] += block_sums[block * sums_per_block + i];
  }
  return result;
}

void check_maps(const torch::Tensor& maps) {
  TORCH_CHECK(maps.device().is_cpu() && maps.dim() == 4 && maps.is_contiguous(),
              "maps must be a contiguous CPU tensor [N, D, H, W]");
}

}  // namespace

std::vector<torch::Tensor> stencil_forward(const torch::Tensor& maps, const torch::Tensor& kernels) {
  check_maps(maps);
  TORCH_CHECK(kernels.dim() == 4 && kernels.size(1) == 3 && kernels.size(2) == 3 && kernels.size(3) == 3,
              "kernels must be [S, 3, 3, 3]");
  std::vector<torch::Tensor> outputs;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, maps.scalar_type(), "stencil_forward",
                                 [&] { outputs = forward_typed<scalar_t>(maps, kernels.cpu()); });
  return outputs;
}

torch::Tensor stencil_weight_gradient(const torch::Tensor& maps, const std::vector<torch::Tensor>& grads) {
  check_maps(maps);
  TORCH_CHECK(!grads.empty(), "need at least one output gradient");
  for (const auto& grad : grads) {
    TORCH_CHECK(grad.sizes() == maps.sizes() && grad.scalar_type() == maps.scalar_type() && grad.is_contiguous() &&
                    grad.device().is_cpu(),
                "each output gradient must be a contiguous CPU tensor of the maps' shape and dtype");
  }
  torch::Tensor result;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, maps.scalar_type(), "stencil_weight_gradient",
                                 [&] { result = weight_gradient_typed<scalar_t>(maps, grads); });
  return result;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("forward", &stencil_forward, "S outputs [N, D, H, W]: maps [N, D, H, W] with kernels [S, 3, 3, 3]");
  module.def("weight_gradient", &stencil_weight_gradient, "[S, 3, 3, 3] fp64 sums from maps and S gradients");
}
