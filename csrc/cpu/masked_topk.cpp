// CPU launcher of masked_topk (key math in winnow/masked_topk.h): one parallel histogram pass per
// 11-bit digit over all tensors finds the k-th largest key; one parallel pass collects.
#include "winnow/masked_topk.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <type_traits>

#include "isa/importance_kernels.h"
#include "isa/topk_kernel.h"
#include "multi_tensor.h"

namespace winnow::cpu {
Stub<uint32_t (*)(const float*, int64_t, uint32_t*)> tile_keys_float;
Stub<uint64_t (*)(const double*, int64_t, uint64_t*)> tile_keys_double;
Stub<uint32_t (*)(const Id3Tile&, uint32_t*)> id3_tile_keys_float;
Stub<uint64_t (*)(const Id3Tile&, uint64_t*)> id3_tile_keys_double;
Stub<void (*)(const Id3Tile&, uint8_t*)> id3_tiles_at_most;
}  // namespace winnow::cpu

namespace winnow::topk {
namespace {

template <typename scalar_t, typename key_t>
std::vector<at::Tensor> select(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  constexpr int kBits = 8 * sizeof(key_t);
  constexpr int kPasses = num_passes<key_t>();
  const size_t n = scores.size();
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) numels[i] = scores[i].numel();
  auto masked_at = [&](size_t t) -> const bool* {
    return unmasked.empty() ? nullptr : unmasked[t].const_data_ptr<bool>();
  };

  // Radix select: after pass p, `prefix` holds the top p digits of the k-th largest key and
  // `remaining` how many of the wanted keys share that prefix.
  key_t prefix = 0;
  int64_t remaining = k;
  for (int pass = 0; pass < kPasses && remaining > 0; ++pass) {
    const int max_threads = at::get_num_threads();
    std::vector<std::array<int64_t, kBins>> hist(max_threads);
    for (auto& h : hist) h.fill(0);
    cpu::for_each_chunk(numels, [&](const cpu::Chunk& ch) -> int64_t {
      auto& h = hist[at::get_thread_num()];
      const scalar_t* s = scores[ch.tensor].const_data_ptr<scalar_t>();
      const bool* skip = masked_at(ch.tensor);
      for (int64_t i = ch.begin; i < ch.end; ++i) {
        if (skip != nullptr && skip[i]) continue;
        const key_t key = order_key(s[i]);
        if (has_prefix(key, prefix, pass, kBits)) h[digit(key, pass, kBits)]++;
      }
      return 0;
    });
    std::array<int64_t, kBins> count{};
    for (const auto& h : hist) {
      for (int d = 0; d < kBins; ++d) count[d] += h[d];
    }
    if (pass == 0) {  // fewer candidates than k: all of them (every key >= 0 = the threshold)
      int64_t candidates = 0;
      for (int d = 0; d < kBins; ++d) candidates += count[d];
      if (candidates < k) {
        remaining = k;
        break;
      }
    }
    int64_t above = 0;
    int chosen = 0;
    for (int d = kBins - 1; d >= 0; --d) {
      if (above + count[d] >= remaining) {
        chosen = d;
        break;
      }
      above += count[d];
    }
    remaining -= above;
    prefix = with_digit(prefix, chosen, pass, kBits);
  }
  const key_t threshold = prefix;  // the k-th largest key; `remaining` of the wanted keys equal it

  // Per tensor: how many keys are above the threshold and how many equal it.
  std::vector<int64_t> above(n, 0), equal(n, 0);
  at::parallel_for(0, static_cast<int64_t>(n), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const scalar_t* s = scores[t].const_data_ptr<scalar_t>();
      const bool* skip = masked_at(t);
      for (int64_t i = 0; i < numels[t]; ++i) {
        if (k == 0 || (skip != nullptr && skip[i])) continue;
        const key_t key = order_key(s[i]);
        above[t] += key > threshold;
        equal[t] += key == threshold;
      }
    }
  });
  // Ties at the threshold go to the lowest (tensor, index): hand them out in tensor order.
  std::vector<int64_t> take_equal(n, 0);
  int64_t left = remaining;
  for (size_t t = 0; t < n; ++t) {
    take_equal[t] = std::min(left, equal[t]);
    left -= take_equal[t];
  }
  std::vector<at::Tensor> out(n);
  for (size_t t = 0; t < n; ++t) {
    out[t] = at::empty({k == 0 ? 0 : above[t] + take_equal[t]}, scores[t].options().dtype(at::kLong));
  }
  at::parallel_for(0, static_cast<int64_t>(n), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      if (out[t].numel() == 0) continue;
      const scalar_t* s = scores[t].const_data_ptr<scalar_t>();
      const bool* skip = masked_at(t);
      int64_t* o = out[t].data_ptr<int64_t>();
      int64_t ties = take_equal[t], w = 0;
      for (int64_t i = 0; i < numels[t]; ++i) {
        if (skip != nullptr && skip[i]) continue;
        const key_t key = order_key(s[i]);
        if (key > threshold || (key == threshold && ties-- > 0)) o[w++] = i;
      }
    }
  });
  return out;
}

// Small k (ID3 unmasks budget / total_steps entries per step): one pass, each thread keeping a
// buffer of candidates. Once a thread has k, only an entry above the k-th best key so far (the
// cut) can matter, and a tile whose largest key is not above it is skipped after one vectorised
// max; the buffer is cut back to its best k whenever it holds 2k, so even scores that rise
// along the scan (every entry a candidate) cost O(1) each, not a heap's O(log k).
// The threads' survivors are merged by (key desc, tensor asc, index asc): deterministic.
// tile_keys(tensor, begin, len, bounded, bound, keys) fills the keys of a tile and returns their
// maximum; when `bounded` it may instead return 0 for a tile it knows holds no key above `bound`,
// without filling keys. tiles_at_most(tensor, begin, len, bound, flags), where it returns true,
// has flagged every tile of [begin, begin + len) that holds no key above `bound`: those are
// skipped without a call each (a flag set under a lower bound stays true).
// `floor` (0: none) leaves out every key below it from the start: exact whenever at least k keys
// reach it (then the k-th best does), which `Selection::exact` reports; the caller runs again
// without a floor when not. A floor near the k-th best spares the keying of the tiles a
// floorless scan takes while its cut is still rising (~k ln(n / k) of them per thread).
template <typename key_t>
struct Selection {
  std::vector<at::Tensor> chosen;
  bool exact;  // false: fewer than k keys reached the floor; chosen is not the top k
  key_t kth;   // the k-th best key (0 when fewer than k entries are masked)
};

template <typename key_t, typename TileKeys, typename TilesAtMost>
Selection<key_t> select_small_k(const std::vector<int64_t>& numels, at::TensorList unmasked, int64_t k,
                                const at::TensorOptions& index_options, TileKeys&& tile_keys,
                                TilesAtMost&& tiles_at_most, key_t floor = 0) {
  struct Entry {
    key_t key;
    int64_t tensor, index;
    bool operator<(const Entry& o) const {  // "better than": larger key, then lower position
      return key != o.key ? key > o.key : (tensor != o.tensor ? tensor < o.tensor : index < o.index);
    }
  };
  struct Candidates {
    std::vector<Entry> kept;
    bool full = false;  // kept has been cut back to k at least once: `cut` is valid
    key_t cut = 0;      // the k-th best key so far
    void shrink(int64_t k) {
      std::nth_element(kept.begin(), kept.begin() + (k - 1), kept.end());
      kept.resize(k);
      cut = kept[k - 1].key;  // the others are at least as good, so their keys are >= it
      full = true;
    }
  };
  const size_t n = numels.size();
  std::vector<Candidates> per_thread(at::get_num_threads());
  cpu::for_each_chunk(numels, [&](const cpu::Chunk& ch) -> int64_t {
    Candidates& c = per_thread[at::get_thread_num()];
    if (c.kept.capacity() == 0) c.kept.reserve(2 * k);
    const bool* skip = unmasked.empty() ? nullptr : unmasked[ch.tensor].const_data_ptr<bool>();
    const int64_t t = static_cast<int64_t>(ch.tensor);
    // A thread's chunks come in increasing (tensor, index) order, so an entry that only ties the
    // cut is worse than the k kept ones: "key > cut" is the whole test once the thread has k.
    // Below the floor nothing counts: "key > floor - 1". `bound` is the larger of the two.
    key_t keys[cpu::kTopkTile];
    uint8_t flags[cpu::kChunkElements / cpu::kTopkTile + 1];
    static_assert(cpu::kChunkElements % cpu::kTopkTile == 0);
    int64_t flagged_from = -1;  // flags[] hold the tiles from this entry on (-1: none yet)
    for (int64_t base = ch.begin; base < ch.end; base += cpu::kTopkTile) {
      const int64_t len = std::min(cpu::kTopkTile, ch.end - base);
      const bool bounded = c.full || floor > 0;
      const key_t bound = c.full ? std::max<key_t>(c.cut, floor > 0 ? floor - 1 : 0) : floor - 1;
      if (bounded && flagged_from < 0 && tiles_at_most(ch.tensor, base, ch.end - base, bound, flags)) {
        flagged_from = base;
      }
      if (flagged_from >= 0 && flags[(base - flagged_from) / cpu::kTopkTile]) continue;
      const key_t top = tile_keys(ch.tensor, base, len, bounded, bound, keys);
      if (bounded && top <= bound) continue;  // the common case
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = base + j;
        if ((bounded && keys[j] <= bound) || (skip != nullptr && skip[i])) continue;
        c.kept.push_back({keys[j], t, i});
        if (static_cast<int64_t>(c.kept.size()) == 2 * k) c.shrink(k);
      }
    }
    return 0;
  });
  std::vector<Entry> all;
  bool some_full = false;
  for (auto& c : per_thread) {
    all.insert(all.end(), c.kept.begin(), c.kept.end());
    some_full = some_full || c.full;
  }
  // a full thread had k keys at or above the floor, so the k-th best is too
  const bool exact = floor == 0 || some_full || static_cast<int64_t>(all.size()) >= k;
  const size_t keep = std::min<size_t>(k, all.size());
  std::partial_sort(all.begin(), all.begin() + keep, all.end());
  std::vector<std::vector<int64_t>> picked(n);
  for (size_t j = 0; j < keep; ++j) picked[all[j].tensor].push_back(all[j].index);
  std::vector<at::Tensor> out(n);
  for (size_t t = 0; t < n; ++t) {
    std::sort(picked[t].begin(), picked[t].end());
    out[t] = at::empty({static_cast<int64_t>(picked[t].size())}, index_options);
    std::copy(picked[t].begin(), picked[t].end(), out[t].data_ptr<int64_t>());
  }
  return {out, exact, keep == static_cast<size_t>(k) ? all[keep - 1].key : key_t(0)};
}

// The small-k path applies when k is at most 2^16 and a 64th of the entries.
bool small_k(int64_t k, int64_t total) { return k > 0 && k <= (int64_t{1} << 16) && k * 64 <= total; }

template <typename scalar_t, typename key_t>
std::vector<at::Tensor> select_small_k_of_scores(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  std::vector<int64_t> numels(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) numels[i] = scores[i].numel();
  const auto kernel = cpu::tile_keys_stub<key_t>().get();
  return select_small_k<key_t>(numels, unmasked, k, scores[0].options().dtype(at::kLong),
                               [&](size_t t, int64_t begin, int64_t len, bool, key_t, key_t* keys) {
                                 return kernel(scores[t].const_data_ptr<scalar_t>() + begin, len, keys);
                               },
                               [](size_t, int64_t, int64_t, key_t, uint8_t*) { return false; })
      .chosen;
}

std::vector<at::Tensor> masked_topk_cpu(at::TensorList scores, at::TensorList unmasked, int64_t k) {
  check_topk(scores, unmasked, k);
  if (k == 0) return nothing_selected(scores);
  int64_t total = 0;
  for (const auto& s : scores) total += s.numel();
  const bool small = small_k(k, total);
  if (scores[0].scalar_type() == at::kDouble) {
    return small ? select_small_k_of_scores<double, uint64_t>(scores, unmasked, k)
                 : select<double, uint64_t>(scores, unmasked, k);
  }
  return small ? select_small_k_of_scores<float, uint32_t>(scores, unmasked, k)
               : select<float, uint32_t>(scores, unmasked, k);
}

// ID3's selection (below) with a floor: small k computes H tile by tile inside the scan; large k
// puts H into temporary scores, then runs the radix select. `at_least` > 0 (a guess at the k-th best H, e.g. the last step's): entries with H below it are
// left out from the start, and the scan runs again without it when fewer than k reach it; the
// result is the same either way. Returns the selection and its k-th best H (0 when fewer than k
// entries are masked, or on the large-k path).
std::tuple<std::vector<at::Tensor>, double> select_id3(at::TensorList params, at::TensorList grads,
                                                       at::TensorList unmasked, int64_t k, double eps, double exponent,
                                                       double at_least) {
  const Id3Inputs in = check_topk_id3(params, grads, unmasked, k, eps, exponent);
  TORCH_CHECK_VALUE(std::isfinite(at_least), "_masked_topk_id3_from: at_least must be finite, got ", at_least);
  if (k == 0) return {nothing_selected(params), 0.0};
  const size_t n = params.size();
  std::vector<int64_t> numels(n);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) total += numels[i] = params[i].numel();
  const bool wide = params[0].scalar_type() == at::kDouble;  // double keys for double math
  auto run = [&](auto key_zero) -> std::tuple<std::vector<at::Tensor>, double> {
    using key_t = decltype(key_zero);
    using score_t = std::conditional_t<sizeof(key_t) == 8, double, float>;
    if (small_k(k, total)) {
      const auto kernel = cpu::id3_tile_keys_stub<key_t>().get();
      auto tile_keys = [&](size_t t, int64_t begin, int64_t len, bool bounded, key_t bound, key_t* keys) {
        const size_t item = params[t].element_size();
        const bool* skip = unmasked.empty() ? nullptr : unmasked[t].const_data_ptr<bool>() + begin;
        return kernel({params[t].scalar_type(), cpu::offset(params[t].const_data_ptr(), begin, item),
                       cpu::offset(in.grads[t].const_data_ptr(), begin, item), skip, len, eps, exponent, bounded,
                       static_cast<double>(value_of_key(bound))},
                      keys);
      };
      const auto flag_kernel = cpu::id3_tiles_at_most.get();
      auto tiles_at_most = [&](size_t t, int64_t begin, int64_t len, key_t bound, uint8_t* flags) {
        const size_t item = params[t].element_size();
        flag_kernel({params[t].scalar_type(), cpu::offset(params[t].const_data_ptr(), begin, item),
                     cpu::offset(in.grads[t].const_data_ptr(), begin, item), nullptr, len, eps, exponent, true,
                     static_cast<double>(value_of_key(bound))},
                    flags);
        return true;
      };
      const auto options = params[0].options().dtype(at::kLong);
      // H >= 0, so a floor only means something above 0 (and 0's key is not the "no floor" 0)
      const score_t floor_value = static_cast<score_t>(at_least);
      const key_t floor = at_least > 0 && floor_value > 0 ? order_key(floor_value) : key_t(0);
      auto sel = select_small_k<key_t>(numels, unmasked, k, options, tile_keys, tiles_at_most, floor);
      if (!sel.exact) sel = select_small_k<key_t>(numels, unmasked, k, options, tile_keys, tiles_at_most);
      return {std::move(sel.chosen), sel.kth == 0 ? 0.0 : static_cast<double>(value_of_key(sel.kth))};
    }
    // Large k: H into zeroed scores (a non-finite H is left at 0 by the update), then the radix select.
    std::vector<at::Tensor> scores;
    for (size_t t = 0; t < n; ++t) {
      scores.push_back(at::zeros({numels[t]}, params[0].options().dtype(c10::CppTypeToScalarType<score_t>::value)));
    }
    const auto update = cpu::id3_update_range.get();
    cpu::for_each_chunk(numels, [&](const cpu::Chunk& ch) -> int64_t {
      const size_t t = ch.tensor, item = params[t].element_size();
      const int64_t b = ch.begin;
      return update({params[t].scalar_type(), cpu::offset(params[t].const_data_ptr(), b, item),
                     cpu::offset(in.grads[t].const_data_ptr(), b, item), scores[t].data_ptr<score_t>() + b,
                     unmasked.empty() ? nullptr : unmasked[t].const_data_ptr<bool>() + b, ch.end - b, eps, exponent,
                     0.0});
    });
    return {select<score_t, key_t>(scores, unmasked, k), 0.0};
  };
  return wide ? run(uint64_t{0}) : run(uint32_t{0});
}

// ID3's selection without a score buffer: the top k of H = |g| / (|p| + eps)^exponent over the
// still-masked entries, H computed tile by tile in the scan (9 bytes read per entry instead of
// importance_update_id3's 17 plus masked_topk's 5). A non-finite H counts as 0.
std::vector<at::Tensor> masked_topk_id3_cpu(at::TensorList params, at::TensorList grads, at::TensorList unmasked,
                                            int64_t k, double eps, double exponent) {
  return std::get<0>(select_id3(params, grads, unmasked, k, eps, exponent, 0.0));
}

// The same with a guess at the k-th best H (ID3 passes the last step's), and this one's k-th best
// H for the next, as a 0-dim float64 tensor.
std::tuple<std::vector<at::Tensor>, at::Tensor> masked_topk_id3_from_cpu(at::TensorList params, at::TensorList grads,
                                                                        at::TensorList unmasked, int64_t k, double eps,
                                                                        double exponent, double at_least) {
  auto [chosen, kth] = select_id3(params, grads, unmasked, k, eps, exponent, at_least);
  return {std::move(chosen), at::scalar_tensor(kth, at::TensorOptions().dtype(at::kDouble))};
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CPU, m) {
  m.impl("masked_topk", &masked_topk_cpu);
  m.impl("_masked_topk_id3", &masked_topk_id3_cpu);
  m.impl("_masked_topk_id3_from", &masked_topk_id3_from_cpu);
}

}  // namespace winnow::topk
