//! The in-memory columnar index that answers [`QueryFilter`]s without scanning items.
//!
//! Built once per catalog load. Rows are laid out in *merged order*: the k-way price merge of
//! every provider's list (ties by canonical provider order). When every provider's list is in
//! price order — true of gpuhunt's catalogs — the result of any query is just its matching rows
//! in ascending row order, because restricting a merge of sorted lists to a subset gives the
//! merge of the restricted lists. For a provider whose list is not price-sorted (vast.ai-style),
//! the query falls back to merging the per-provider matches with [`merge_by_price`].
//!
//! Each predicate becomes a bitset over rows, combined word by word:
//! - equality predicates (provider, spot, CPU architecture, vendor, GPU name — interned,
//!   lowercased — and flags) have one precomputed bitset per value;
//! - range predicates (price, CPU, memory, GPU count, per-GPU and total GPU memory, disk,
//!   compute capability — pre-resolved per row from the accelerator table) use a sorted key
//!   column plus *prefix checkpoints*: the bitset of the rows among the `k·step` smallest keys,
//!   for every `k`. A bound is found by binary search; the rows between it and the nearest
//!   checkpoint (at most `step / 2`) are patched bit by bit.
//!
//! A query therefore costs a few passes over `rows / 64` words plus the output, independent
//! of how many rows each predicate touches.

use std::collections::HashMap;

use super::accelerators::{AcceleratorVendor, compute_capability};
use super::catalog::ProviderCatalog;
use super::filter::{QueryFilter, effective_gpu_memory};
use super::format::parallel_map;
use super::item::{CatalogItem, CpuArchitecture};
use super::order::merge_by_price;

/// Where a row of the index lives: the provider's index in the catalog and the item's position
/// in that provider's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowRef {
    /// Index into [`Catalog::providers`](super::Catalog::providers).
    pub provider: u32,
    /// Position in the provider's [`items`](super::ProviderCatalog::items).
    pub position: u32,
}

/// A fixed-length set of row ids.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
        }
    }

    fn ones(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        if !len.is_multiple_of(64)
            && let Some(last) = words.last_mut()
        {
            *last = (1u64 << (len % 64)) - 1;
        }
        Self { words }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    fn get(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn and_assign(&mut self, other: &Bitset) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    fn and_not_assign(&mut self, other: &Bitset) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
    }

    fn or_assign(&mut self, other: &Bitset) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// `self & other`, as a new set.
    fn and(&self, other: &Bitset) -> Bitset {
        Bitset {
            words: self
                .words
                .iter()
                .zip(&other.words)
                .map(|(a, b)| a & b)
                .collect(),
        }
    }

    fn clear_all(&mut self) {
        self.words.fill(0);
    }

    fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros() as usize;
                    w &= w - 1;
                    i * 64 + bit
                })
            })
        })
    }

    fn heap_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// Catalogs with fewer rows build their columns on one thread.
const PARALLEL_BUILD_ROWS: usize = 20_000;

/// Smallest spacing between prefix checkpoints.
const MIN_CHECKPOINT_STEP: usize = 256;
/// Largest number of prefix checkpoints per column.
const MAX_CHECKPOINTS: usize = 64;

/// A range-searchable column: keys sorted with their rows, plus prefix checkpoints.
#[derive(Debug, Clone)]
struct RangeColumn<K> {
    /// The distinct keys in ascending order (no NaN).
    keys: Vec<K>,
    /// `starts[i]`: the first sorted position holding `keys[i]`; then `rows.len()`.
    starts: Vec<u32>,
    /// Row ids sorted by key.
    rows: Vec<u32>,
    step: usize,
    /// `checkpoints[j]`: the rows at sorted positions `< min(j * step, keys.len())`.
    checkpoints: Vec<Bitset>,
    /// Rows that pass every bound (a NaN key, or no key where a missing value passes).
    always: Bitset,
    has_always: bool,
    /// Every row either has a key or is in `always`.
    dense: bool,
}

/// Rows sorted by key: the distinct keys, where each starts, and the rows.
struct SortedRows<K> {
    keys: Vec<K>,
    /// `starts[i]`: first position of `keys[i]` in `rows`; then `rows.len()`.
    starts: Vec<u32>,
    rows: Vec<u32>,
}

impl<K: PartialOrd + Copy> SortedRows<K> {
    /// Sorts `(key, row)` pairs (no NaN keys).
    fn from_pairs(mut pairs: Vec<(K, u32)>) -> Self {
        pairs.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        let mut keys: Vec<K> = Vec::new();
        let mut starts = Vec::new();
        for (pos, &(k, _)) in pairs.iter().enumerate() {
            if keys.last().is_none_or(|last| *last < k) {
                keys.push(k);
                starts.push(pos as u32);
            }
        }
        starts.push(pairs.len() as u32);
        Self {
            keys,
            starts,
            rows: pairs.into_iter().map(|p| p.1).collect(),
        }
    }
}

impl<K: PartialOrd + Copy> RangeColumn<K> {
    fn build(sorted: SortedRows<K>, n_rows: usize, always: Bitset) -> Self {
        let SortedRows { keys, starts, rows } = sorted;
        let len = rows.len();
        let step = len.div_ceil(MAX_CHECKPOINTS).max(MIN_CHECKPOINT_STEP);
        let mut checkpoints = Vec::with_capacity(len / step + 2);
        let mut cur = Bitset::zeros(n_rows);
        checkpoints.push(cur.clone());
        for (pos, &row) in rows.iter().enumerate() {
            cur.set(row as usize);
            if (pos + 1) % step == 0 || pos + 1 == len {
                checkpoints.push(cur.clone());
            }
        }
        let always_count = always.count();
        Self {
            keys,
            starts,
            rows,
            step,
            checkpoints,
            has_always: always_count > 0,
            dense: len + always_count == n_rows,
            always,
        }
    }

    /// The nearest checkpoint to sorted position `x`, and the position it covers.
    fn nearest(&self, x: usize) -> (usize, usize) {
        let j = ((x + self.step / 2) / self.step).min(self.checkpoints.len() - 1);
        (j, (j * self.step).min(self.rows.len()))
    }

    /// `acc &= rows at sorted positions < x`.
    fn and_prefix(&self, acc: &mut Bitset, x: usize, keep: &mut Vec<u32>) {
        let (j, p) = self.nearest(x);
        if p <= x {
            keep.clear();
            keep.extend(
                self.rows[p..x]
                    .iter()
                    .copied()
                    .filter(|&r| acc.get(r as usize)),
            );
            acc.and_assign(&self.checkpoints[j]);
            keep.iter().for_each(|&r| acc.set(r as usize));
        } else {
            acc.and_assign(&self.checkpoints[j]);
            self.rows[x..p].iter().for_each(|&r| acc.clear(r as usize));
        }
    }

    /// `acc &= !(rows at sorted positions < x)`.
    fn and_not_prefix(&self, acc: &mut Bitset, x: usize, keep: &mut Vec<u32>) {
        let (j, p) = self.nearest(x);
        if p <= x {
            acc.and_not_assign(&self.checkpoints[j]);
            self.rows[p..x].iter().for_each(|&r| acc.clear(r as usize));
        } else {
            keep.clear();
            keep.extend(
                self.rows[x..p]
                    .iter()
                    .copied()
                    .filter(|&r| acc.get(r as usize)),
            );
            acc.and_not_assign(&self.checkpoints[j]);
            keep.iter().for_each(|&r| acc.set(r as usize));
        }
    }

    /// `acc &= rows whose key lies in [lo, hi] (inclusive; None = open), or that always pass`.
    fn and_range(&self, acc: &mut Bitset, lo: Option<K>, hi: Option<K>, keep: &mut Vec<u32>) {
        let len = self.rows.len();
        // First sorted position not below `lo`, first above `hi`: Python's `value < lo` /
        // `value > hi` failures (keys hold no NaN, so `<=` is `not >`).
        let at = |distinct: usize| self.starts[distinct] as usize;
        let a = lo.map_or(0, |lo| at(self.keys.partition_point(|k| *k < lo)));
        let b = hi.map_or(len, |hi| at(self.keys.partition_point(|k| *k <= hi)));
        let saved = self.has_always.then(|| acc.and(&self.always));
        if a >= b {
            acc.clear_all();
        } else {
            if b < len || !self.dense {
                self.and_prefix(acc, b, keep);
            }
            if a > 0 {
                self.and_not_prefix(acc, a, keep);
            }
        }
        if let Some(saved) = saved {
            acc.or_assign(&saved);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.keys.len() * std::mem::size_of::<K>()
            + self.starts.len() * 4
            + self.rows.len() * 4
            + self
                .checkpoints
                .iter()
                .map(Bitset::heap_bytes)
                .sum::<usize>()
            + self.always.heap_bytes()
    }
}

/// Builds a range column from per-row keys; NaN keys pass every bound (Python's comparisons
/// with NaN are all false, and a missing disk size is never filtered, so it is stored as NaN).
fn float_column(keys: &[f64]) -> RangeColumn<f64> {
    let n_rows = keys.len();
    let mut always = Bitset::zeros(n_rows);
    let mut present = Vec::with_capacity(n_rows);
    let mut in_order = true;
    let mut last = f64::NEG_INFINITY;
    for (row, &k) in keys.iter().enumerate() {
        if k.is_nan() {
            always.set(row);
        } else {
            in_order &= last <= k;
            last = k;
            present.push(row as u32);
        }
    }
    let sorted = if in_order {
        // Already in key order (the price column of price-sorted providers).
        let mut distinct: Vec<f64> = Vec::new();
        let mut starts = Vec::new();
        for (pos, &row) in present.iter().enumerate() {
            let k = keys[row as usize];
            if distinct.last().is_none_or(|d| *d < k) {
                distinct.push(k);
                starts.push(pos as u32);
            }
        }
        starts.push(present.len() as u32);
        SortedRows {
            keys: distinct,
            starts,
            rows: present,
        }
    } else {
        SortedRows::from_pairs(present.iter().map(|&r| (keys[r as usize], r)).collect())
    };
    RangeColumn::build(sorted, n_rows, always)
}

/// Builds the compute-capability column; rows without a capability fail every bound.
fn cc_column(keys: &[Option<u64>]) -> RangeColumn<u64> {
    let pairs = keys
        .iter()
        .enumerate()
        .filter_map(|(row, k)| k.map(|k| (k, row as u32)))
        .collect();
    RangeColumn::build(
        SortedRows::from_pairs(pairs),
        keys.len(),
        Bitset::zeros(keys.len()),
    )
}

/// FNV-1a: a fast hasher for the short strings interned while building the index.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub(crate) type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Per-provider facts of the index.
#[derive(Debug, Clone)]
struct ProviderRows {
    rows: Bitset,
    price_sorted: bool,
}

/// The merged order of every provider's items: the k-way price merge (ties by provider order).
fn merged_order(providers: &[ProviderCatalog]) -> Vec<RowRef> {
    let refs = providers.iter().enumerate().map(|(p, c)| {
        (0..c.len()).map(move |pos| RowRef {
            provider: p as u32,
            position: pos as u32,
        })
    });
    let price = |r: &RowRef| providers[r.provider as usize].items()[r.position as usize].price;
    if providers.iter().all(ProviderCatalog::is_price_sorted) {
        // Merging sorted lists = a stable sort of their concatenation (which the standard
        // library's run-detecting sort does in O(n log k)).
        let mut keyed: Vec<(f64, RowRef)> = refs.flatten().map(|r| (price(&r), r)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        keyed.into_iter().map(|(_, r)| r).collect()
    } else {
        merge_by_price(refs, price).collect()
    }
}

/// The columnar index of a [`Catalog`](super::Catalog); see the [module docs](self).
#[derive(Clone)]
pub struct CatalogIndex {
    len: usize,
    refs: Vec<RowRef>,
    prices: Vec<f64>,
    providers: Vec<ProviderRows>,
    all: Bitset,
    spot: Bitset,
    arm: Bitset,
    no_gpus: Bitset,
    vendors: Vec<Bitset>,
    /// Lowercased GPU name → rows.
    gpu_names: HashMap<String, Bitset>,
    /// Flag → rows carrying it.
    flags: Vec<(String, Bitset)>,
    price: RangeColumn<f64>,
    cpu: RangeColumn<f64>,
    memory: RangeColumn<f64>,
    gpu_count: RangeColumn<f64>,
    gpu_memory: RangeColumn<f64>,
    total_gpu_memory: RangeColumn<f64>,
    /// Rows without a disk size are in `always`.
    disk: RangeColumn<f64>,
    /// Only rows with a resolvable compute capability (NVIDIA, named, known) have a key.
    compute_capability: RangeColumn<u64>,
}

impl std::fmt::Debug for CatalogIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogIndex")
            .field("rows", &self.len)
            .field("gpu_names", &self.gpu_names.len())
            .field(
                "flags",
                &self
                    .flags
                    .iter()
                    .map(|(f, _)| f.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

impl CatalogIndex {
    /// Builds the index over `providers` (in the catalog's canonical order).
    pub(crate) fn build(providers: &[ProviderCatalog]) -> Self {
        let merged = merged_order(providers);
        let n = merged.len();
        let items: Vec<&CatalogItem> = merged
            .iter()
            .map(|r| &providers[r.provider as usize].items()[r.position as usize])
            .collect();

        let mut provider_rows: Vec<Bitset> = providers.iter().map(|_| Bitset::zeros(n)).collect();
        let mut spot = Bitset::zeros(n);
        let mut arm = Bitset::zeros(n);
        let mut no_gpus = Bitset::zeros(n);
        let mut vendors: Vec<Bitset> = AcceleratorVendor::ALL
            .iter()
            .map(|_| Bitset::zeros(n))
            .collect();
        // GPU names are interned: each distinct spelling is lowercased and its compute
        // capability resolved once. `name_ids`: spelling → (rows of its lowercase form, CC).
        let mut name_ids: FnvMap<&str, (usize, Option<u64>)> = FnvMap::default();
        let mut lower_ids: FnvMap<String, usize> = FnvMap::default();
        let mut name_rows: Vec<Bitset> = Vec::new();
        let mut flags: FnvMap<&str, Bitset> = FnvMap::default();
        let mut cc_keys: Vec<Option<u64>> = Vec::with_capacity(n);
        // Range-column keys, gathered in one pass: price, cpu, memory, gpu count, per-GPU and
        // total GPU memory, disk (NaN = passes every bound).
        let mut keys: [Vec<f64>; 7] = std::array::from_fn(|_| Vec::with_capacity(n));

        for (row, item) in items.iter().enumerate() {
            provider_rows[merged[row].provider as usize].set(row);
            if item.spot {
                spot.set(row);
            }
            if item.cpu_arch == CpuArchitecture::Arm {
                arm.set(row);
            }
            if item.gpu_count == 0 {
                no_gpus.set(row);
            }
            if let Some(v) = item.gpu_vendor {
                vendors[v.ordinal()].set(row);
            }
            let mut cc = None;
            if let Some(name) = item.gpu_name.as_deref() {
                let (bits, name_cc) = *name_ids.entry(name).or_insert_with(|| {
                    let bits = *lower_ids.entry(name.to_lowercase()).or_insert_with(|| {
                        name_rows.push(Bitset::zeros(n));
                        name_rows.len() - 1
                    });
                    let cc = if name.is_empty() {
                        None
                    } else {
                        compute_capability(name).map(|c| c.key())
                    };
                    (bits, cc)
                });
                name_rows[bits].set(row);
                if item.gpu_vendor == Some(AcceleratorVendor::Nvidia) {
                    cc = name_cc;
                }
            }
            cc_keys.push(cc);
            let (per_gpu, all_gpus) = effective_gpu_memory(item.gpu_count, item.gpu_memory);
            let row_keys = [
                item.price,
                item.cpu as f64,
                item.memory,
                item.gpu_count as f64,
                per_gpu,
                all_gpus,
                item.disk_size.unwrap_or(f64::NAN),
            ];
            for (column, key) in keys.iter_mut().zip(row_keys) {
                column.push(key);
            }
            for flag in &item.flags {
                flags
                    .entry(flag)
                    .or_insert_with(|| Bitset::zeros(n))
                    .set(row);
            }
        }

        let (mut ranges, compute_capability) = if n < PARALLEL_BUILD_ROWS {
            (
                keys.iter().map(|k| float_column(k)).collect(),
                cc_column(&cc_keys),
            )
        } else {
            std::thread::scope(|scope| {
                let cc = scope.spawn(|| cc_column(&cc_keys));
                let ranges = parallel_map(&keys, |column| float_column(column));
                let cc = cc.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                (ranges, cc)
            })
        };
        let mut take = || ranges.remove(0);
        let (price, cpu, memory, gpu_count) = (take(), take(), take(), take());
        let (gpu_memory, total_gpu_memory, disk) = (take(), take(), take());

        let mut flags: Vec<(String, Bitset)> =
            flags.into_iter().map(|(f, b)| (f.to_string(), b)).collect();
        flags.sort_by(|a, b| a.0.cmp(&b.0));
        let mut gpu_names = HashMap::with_capacity(lower_ids.len());
        let mut name_rows: Vec<Option<Bitset>> = name_rows.into_iter().map(Some).collect();
        for (lower, id) in lower_ids {
            if let Some(bits) = name_rows[id].take() {
                gpu_names.insert(lower, bits);
            }
        }
        Self {
            len: n,
            prices: items.iter().map(|i| i.price).collect(),
            refs: merged,
            providers: providers
                .iter()
                .zip(provider_rows)
                .map(|(c, rows)| ProviderRows {
                    rows,
                    price_sorted: c.is_price_sorted(),
                })
                .collect(),
            all: Bitset::ones(n),
            spot,
            arm,
            no_gpus,
            vendors,
            gpu_names,
            flags,
            price,
            cpu,
            memory,
            gpu_count,
            gpu_memory,
            total_gpu_memory,
            disk,
            compute_capability,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index has no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where row `row` (in merged order) lives. Panics if `row >= len()`.
    pub fn row_ref(&self, row: usize) -> RowRef {
        self.refs[row]
    }

    /// Approximate heap size of the index in bytes.
    pub fn heap_bytes(&self) -> usize {
        let bitsets = self
            .providers
            .iter()
            .map(|p| &p.rows)
            .chain([&self.all, &self.spot, &self.arm, &self.no_gpus])
            .chain(&self.vendors)
            .chain(self.gpu_names.values())
            .chain(self.flags.iter().map(|f| &f.1))
            .map(Bitset::heap_bytes)
            .sum::<usize>();
        let columns = [
            &self.price,
            &self.cpu,
            &self.memory,
            &self.gpu_count,
            &self.gpu_memory,
            &self.total_gpu_memory,
            &self.disk,
        ]
        .iter()
        .map(|c| c.heap_bytes())
        .sum::<usize>();
        bitsets
            + columns
            + self.compute_capability.heap_bytes()
            + self.refs.len() * 8
            + self.prices.len() * 8
    }

    /// The rows matching `q` among `providers` (indices; `None` = all), in result order,
    /// at most `limit` of them.
    pub(crate) fn query(
        &self,
        q: &QueryFilter,
        providers: Option<&[usize]>,
        limit: Option<usize>,
    ) -> Vec<u32> {
        let providers = providers.filter(|ps| !(0..self.providers.len()).all(|i| ps.contains(&i)));
        let acc = self.matching_rows(q, providers);
        let limit = limit.unwrap_or(usize::MAX);
        let sorted = match providers {
            Some(ps) => ps.iter().all(|&p| self.providers[p].price_sorted),
            None => self.providers.iter().all(|p| p.price_sorted),
        };
        if sorted {
            return acc.iter_ones().take(limit).map(|r| r as u32).collect();
        }
        let selected: Vec<usize> =
            providers.map_or_else(|| (0..self.providers.len()).collect(), <[usize]>::to_vec);
        let per_provider: Vec<Bitset> = selected
            .iter()
            .map(|&p| acc.and(&self.providers[p].rows))
            .collect();
        let lists = per_provider.iter().map(|bits| bits.iter_ones());
        merge_by_price(lists, |&r| self.prices[r])
            .take(limit)
            .map(|r| r as u32)
            .collect()
    }

    fn matching_rows(&self, q: &QueryFilter, providers: Option<&[usize]>) -> Bitset {
        let mut keep = Vec::new();
        let mut acc = match providers {
            None => self.all.clone(),
            Some(ps) => {
                let mut acc = Bitset::zeros(self.len);
                ps.iter()
                    .for_each(|&p| acc.or_assign(&self.providers[p].rows));
                acc
            }
        };
        match q.spot {
            Some(true) => acc.and_assign(&self.spot),
            Some(false) => acc.and_not_assign(&self.spot),
            None => {}
        }
        match q.cpu_arch {
            Some(CpuArchitecture::Arm) => acc.and_assign(&self.arm),
            Some(CpuArchitecture::X86) => acc.and_not_assign(&self.arm),
            None => {}
        }
        if let Some(allowed) = &q.allowed_flags {
            for (flag, rows) in &self.flags {
                if !allowed.contains(flag) {
                    acc.and_not_assign(rows);
                }
            }
        }
        let f = |v: Option<i64>| v.map(|v| v as f64);
        if q.min_price.is_some() || q.max_price.is_some() {
            self.price
                .and_range(&mut acc, q.min_price, q.max_price, &mut keep);
        }
        if q.min_cpu.is_some() || q.max_cpu.is_some() {
            self.cpu
                .and_range(&mut acc, f(q.min_cpu), f(q.max_cpu), &mut keep);
        }
        if q.min_memory.is_some() || q.max_memory.is_some() {
            self.memory
                .and_range(&mut acc, q.min_memory, q.max_memory, &mut keep);
        }
        if q.min_disk_size.is_some() || q.max_disk_size.is_some() {
            self.disk
                .and_range(&mut acc, q.min_disk_size, q.max_disk_size, &mut keep);
        }
        self.apply_gpu_block(&mut acc, q, &mut keep);
        acc
    }

    /// The GPU checks; rows without GPUs bypass them when `min_gpu_count == Some(0)`.
    fn apply_gpu_block(&self, acc: &mut Bitset, q: &QueryFilter, keep: &mut Vec<u32>) {
        let has_gpu_checks = q.gpu_vendor.is_some()
            || q.min_gpu_count.is_some()
            || q.max_gpu_count.is_some()
            || q.gpu_name.is_some()
            || q.has_cc_bounds()
            || q.min_gpu_memory.is_some()
            || q.max_gpu_memory.is_some()
            || q.min_total_gpu_memory.is_some()
            || q.max_total_gpu_memory.is_some();
        if !has_gpu_checks {
            return;
        }
        let bypass = (q.min_gpu_count == Some(0)).then(|| acc.and(&self.no_gpus));
        if let Some(v) = q.gpu_vendor {
            acc.and_assign(&self.vendors[v.ordinal()]);
        }
        let f = |v: Option<i64>| v.map(|v| v as f64);
        if q.min_gpu_count.is_some() || q.max_gpu_count.is_some() {
            self.gpu_count
                .and_range(acc, f(q.min_gpu_count), f(q.max_gpu_count), keep);
        }
        if let Some(names) = &q.gpu_name {
            let mut any = Bitset::zeros(self.len);
            let mut seen: Vec<String> = Vec::with_capacity(names.len());
            for name in names {
                let lower = name.to_lowercase();
                if seen.contains(&lower) {
                    continue;
                }
                if let Some(rows) = self.gpu_names.get(&lower) {
                    any.or_assign(rows);
                }
                seen.push(lower);
            }
            acc.and_assign(&any);
        }
        if q.has_cc_bounds() {
            let lo = q.min_compute_capability.map(|c| c.key());
            let hi = q.max_compute_capability.map(|c| c.key());
            self.compute_capability.and_range(acc, lo, hi, keep);
        }
        if q.min_gpu_memory.is_some() || q.max_gpu_memory.is_some() {
            self.gpu_memory
                .and_range(acc, q.min_gpu_memory, q.max_gpu_memory, keep);
        }
        if q.min_total_gpu_memory.is_some() || q.max_total_gpu_memory.is_some() {
            self.total_gpu_memory.and_range(
                acc,
                q.min_total_gpu_memory,
                q.max_total_gpu_memory,
                keep,
            );
        }
        if let Some(bypass) = bypass
            && !bypass.is_empty()
        {
            acc.or_assign(&bypass);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::offers::accelerators::ComputeCapability;
    use crate::offers::filter::matches;

    /// xorshift64*: a tiny deterministic generator for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
        fn chance(&mut self, p: f64) -> bool {
            (self.next() % 10_000) as f64 / 10_000.0 < p
        }
    }

    const NAMES: &[(&str, AcceleratorVendor)] = &[
        ("A100", AcceleratorVendor::Nvidia),
        ("h100", AcceleratorVendor::Nvidia),
        ("T4", AcceleratorVendor::Nvidia),
        ("Z9", AcceleratorVendor::Nvidia),
        ("MI300X", AcceleratorVendor::Amd),
        ("v5litepod-8", AcceleratorVendor::Google),
        ("", AcceleratorVendor::Nvidia),
    ];

    fn random_item(rng: &mut Rng, provider: &str, price: f64) -> CatalogItem {
        let gpu = rng.chance(0.6);
        let (name, vendor) = *rng.pick(NAMES);
        let gpu_count = if gpu { *rng.pick(&[1, 2, 8, -1]) } else { 0 };
        CatalogItem {
            provider: provider.into(),
            instance_name: format!("i{}", rng.below(50)).into(),
            location: "l".into(),
            price,
            cpu: *rng.pick(&[1, 2, 4, 8, 96]),
            memory: *rng.pick(&[1.0, 8.0, 16.5, 64.0, f64::NAN]),
            gpu_count,
            gpu_name: (gpu || rng.chance(0.1)).then(|| name.into()),
            gpu_memory: if rng.chance(0.8) {
                Some(*rng.pick(&[16.0, 24.0, 80.0, 192.0]))
            } else {
                None
            },
            spot: rng.chance(0.5),
            disk_size: if rng.chance(0.5) {
                Some(*rng.pick(&[50.0, 100.0, 200.0, f64::NAN]))
            } else {
                None
            },
            gpu_vendor: if gpu || rng.chance(0.1) {
                Some(vendor)
            } else {
                None
            },
            flags: if rng.chance(0.2) {
                vec![rng.pick(&["f1", "f2", "F1"]).to_string()]
            } else {
                vec![]
            },
            cpu_arch: if rng.chance(0.3) {
                CpuArchitecture::Arm
            } else {
                CpuArchitecture::X86
            },
            provider_data: Default::default(),
        }
    }

    fn random_catalog(rng: &mut Rng, n: usize, sorted: bool) -> Vec<ProviderCatalog> {
        ["aws", "gcp", "oci", "runpod"]
            .iter()
            .map(|p| {
                let mut items: Vec<CatalogItem> = (0..n)
                    .map(|_| {
                        let price = (rng.below(40) as f64) / 4.0;
                        random_item(rng, p, price)
                    })
                    .collect();
                if sorted {
                    items.sort_by(|a, b| a.price.total_cmp(&b.price));
                }
                ProviderCatalog::new(p, "v", items)
            })
            .collect()
    }

    fn random_query(rng: &mut Rng) -> QueryFilter {
        let mut q = QueryFilter::default();
        let opt = |rng: &mut Rng, vals: &[f64]| rng.chance(0.25).then(|| *rng.pick(vals));
        let opt_i = |rng: &mut Rng, vals: &[i64]| rng.chance(0.25).then(|| *rng.pick(vals));
        if rng.chance(0.3) {
            q.provider = Some(vec![
                "AWS".into(),
                rng.pick(&["oci", "Gcp", "runpod"]).to_string(),
            ]);
        }
        q.cpu_arch = rng
            .chance(0.2)
            .then(|| *rng.pick(&[CpuArchitecture::X86, CpuArchitecture::Arm]));
        q.min_cpu = opt_i(rng, &[1, 2, 5]);
        q.max_cpu = opt_i(rng, &[4, 8, 100]);
        q.min_memory = opt(rng, &[1.0, 8.0, 16.5]);
        q.max_memory = opt(rng, &[16.5, 64.0]);
        q.min_gpu_count = opt_i(rng, &[0, 0, 1, 2, -5]);
        q.max_gpu_count = opt_i(rng, &[0, 1, 8]);
        q.gpu_vendor = rng
            .chance(0.2)
            .then(|| *rng.pick(&[AcceleratorVendor::Nvidia, AcceleratorVendor::Amd]));
        if rng.chance(0.25) {
            q.gpu_name = Some(match rng.below(4) {
                0 => vec![],
                1 => vec!["a100".into()],
                2 => vec!["H100".into(), "mi300x".into(), "h100".into()],
                _ => vec!["V5LITEPOD-8".into(), "".into()],
            });
        }
        q.min_gpu_memory = opt(rng, &[0.0, 24.0, 80.0]);
        q.max_gpu_memory = opt(rng, &[24.0, 80.0]);
        q.min_total_gpu_memory = opt(rng, &[0.0, 48.0, 160.0]);
        q.max_total_gpu_memory = opt(rng, &[80.0, 640.0]);
        q.min_disk_size = opt(rng, &[50.0, 100.0, 150.0]);
        q.max_disk_size = opt(rng, &[100.0, 200.0]);
        q.min_price = opt(rng, &[0.0, 1.25, 3.0]);
        q.max_price = opt(rng, &[1.25, 5.0, 9.0]);
        q.min_compute_capability = rng
            .chance(0.15)
            .then(|| *rng.pick(&[ComputeCapability::new(7, 5), ComputeCapability::new(8, 0)]));
        q.max_compute_capability = rng
            .chance(0.15)
            .then(|| *rng.pick(&[ComputeCapability::new(8, 0), ComputeCapability::new(9, 0)]));
        q.spot = rng.chance(0.3).then(|| rng.chance(0.5));
        if rng.chance(0.3) {
            q.allowed_flags = Some(match rng.below(3) {
                0 => vec![],
                1 => vec!["f1".into()],
                _ => vec!["f1".into(), "f2".into()],
            });
        }
        q
    }

    /// The reference: scan every provider with `matches`, then merge by price.
    fn reference(providers: &[ProviderCatalog], q: &QueryFilter) -> Vec<RowRef> {
        let lists = providers.iter().enumerate().map(|(p, c)| {
            c.items()
                .iter()
                .enumerate()
                .filter(|(_, i)| matches(i, q))
                .map(move |(pos, i)| {
                    (
                        RowRef {
                            provider: p as u32,
                            position: pos as u32,
                        },
                        i.price,
                    )
                })
                .collect::<Vec<_>>()
        });
        merge_by_price(lists, |x| x.1).map(|x| x.0).collect()
    }

    fn check(sorted: bool, seed: u64, rows_per_provider: usize) {
        let mut rng = Rng(seed);
        let providers = random_catalog(&mut rng, rows_per_provider, sorted);
        let index = CatalogIndex::build(&providers);
        for _ in 0..600 {
            let q = random_query(&mut rng);
            let selected: Option<Vec<usize>> = q.provider.as_ref().map(|ps| {
                let lower: Vec<String> = ps.iter().map(|p| p.to_lowercase()).collect();
                (0..providers.len())
                    .filter(|&i| lower.contains(&providers[i].name().to_string()))
                    .collect()
            });
            let got: Vec<RowRef> = index
                .query(&q, selected.as_deref(), None)
                .into_iter()
                .map(|r| index.row_ref(r as usize))
                .collect();
            assert_eq!(got, reference(&providers, &q), "query {q:?}");
            let limited = index.query(&q, selected.as_deref(), Some(3));
            assert_eq!(limited.len(), got.len().min(3));
        }
    }

    #[test]
    fn index_agrees_with_matches_on_sorted_providers() {
        check(true, 0x9E37_79B9_7F4A_7C15, 700);
    }

    #[test]
    fn index_agrees_with_matches_on_unsorted_providers() {
        check(false, 12345, 300);
    }

    #[test]
    fn tiny_and_empty_catalogs() {
        check(true, 7, 1);
        let index = CatalogIndex::build(&[]);
        assert!(index.query(&QueryFilter::default(), None, None).is_empty());
    }

    #[test]
    fn float_columns_sort_every_way() {
        let mut rng = Rng(99);
        for distinct in [3usize, 50, 6000] {
            let n = 20_000;
            let mut keys: Vec<f64> = (0..n).map(|_| rng.below(distinct) as f64 - 1.0).collect();
            keys[7] = f64::NAN;
            keys[8] = -0.0;
            let mut sorted_keys = keys.clone();
            sorted_keys.sort_by(f64::total_cmp);
            for column_keys in [&keys, &sorted_keys] {
                let col = float_column(column_keys);
                let mut keep = Vec::new();
                for _ in 0..50 {
                    let lo = rng
                        .chance(0.8)
                        .then(|| rng.below(distinct + 2) as f64 - 2.0);
                    let hi = rng
                        .chance(0.8)
                        .then(|| rng.below(distinct + 2) as f64 - 2.0);
                    let mut acc = Bitset::ones(n);
                    col.and_range(&mut acc, lo, hi, &mut keep);
                    let want: Vec<usize> = (0..n)
                        .filter(|&r| {
                            let k = column_keys[r];
                            !(lo.is_some_and(|l| k < l) || hi.is_some_and(|h| k > h))
                        })
                        .collect();
                    assert_eq!(
                        acc.iter_ones().collect::<Vec<_>>(),
                        want,
                        "{distinct} {lo:?} {hi:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bitset_basics() {
        let mut b = Bitset::ones(70);
        assert_eq!(b.count(), 70);
        b.clear(3);
        assert!(!b.get(3));
        assert_eq!(b.iter_ones().take(4).collect::<Vec<_>>(), [0, 1, 2, 4]);
        assert_eq!(b.iter_ones().last(), Some(69));
    }
}
