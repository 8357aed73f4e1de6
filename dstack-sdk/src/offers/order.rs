//! Offer ordering: gpuhunt's/dstack's k-way price merge, the `max_offers` cut and the stable
//! available-first sort.
//!
//! The merge takes lists that are each in their own order (normally price ascending; vast.ai
//! orders by score) and, like Python's `heapq.merge(key=price)`, repeatedly emits the cheapest
//! head. The result is therefore *not* a global sort: each list keeps its relative order.
//! gpuhunt breaks cross-list ties arbitrarily; here the list that comes first wins, so the
//! result is deterministic. NaN prices order after every other price.
//!
//! dstack then keeps the first `max_offers` and stably moves available offers to the front;
//! [`select_offers`] does all three steps over any offer type through two accessors.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Lazily merges `lists` by ascending `price`, preserving each list's order; ties go to the
/// earlier list. See the [module docs](self).
pub fn merge_by_price<L, T, F>(
    lists: impl IntoIterator<Item = L>,
    price: F,
) -> MergeByPrice<L::IntoIter, F>
where
    L: IntoIterator<Item = T>,
    F: FnMut(&T) -> f64,
{
    let mut iters: Vec<L::IntoIter> = lists.into_iter().map(IntoIterator::into_iter).collect();
    let mut price = price;
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (list, it) in iters.iter_mut().enumerate() {
        if let Some(item) = it.next() {
            heap.push(Head {
                price: price(&item),
                list,
                item,
            });
        }
    }
    MergeByPrice { iters, heap, price }
}

/// The iterator returned by [`merge_by_price`].
pub struct MergeByPrice<I: Iterator, F> {
    iters: Vec<I>,
    heap: BinaryHeap<Head<I::Item>>,
    price: F,
}

impl<I, F> Iterator for MergeByPrice<I, F>
where
    I: Iterator,
    F: FnMut(&I::Item) -> f64,
{
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let head = self.heap.pop()?;
        if let Some(next) = self.iters.get_mut(head.list).and_then(Iterator::next) {
            self.heap.push(Head {
                price: (self.price)(&next),
                list: head.list,
                item: next,
            });
        }
        Some(head.item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (mut lo, mut hi) = (self.heap.len(), Some(self.heap.len()));
        for it in &self.iters {
            let (l, h) = it.size_hint();
            lo = lo.saturating_add(l);
            hi = hi.zip(h).and_then(|(a, b)| a.checked_add(b));
        }
        (lo, hi)
    }
}

/// A list head in the merge heap; `Ord` is reversed so that `BinaryHeap` pops the cheapest
/// (then earliest-list) head first.
struct Head<T> {
    price: f64,
    list: usize,
    item: T,
}

impl<T> Head<T> {
    fn key_cmp(&self, other: &Self) -> Ordering {
        self.price
            .total_cmp(&other.price)
            .then(self.list.cmp(&other.list))
    }
}

impl<T> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key_cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Head<T> {}

impl<T> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key_cmp(self)
    }
}

/// Stably moves the items for which `is_available` holds to the front, keeping the order
/// within both groups (dstack's final sort of offers).
pub fn sort_available_first<T>(items: &mut [T], mut is_available: impl FnMut(&T) -> bool) {
    items.sort_by_cached_key(|item| !is_available(item));
}

/// dstack's offer pipeline tail: merge per-backend `lists` by price, keep the first
/// `max_offers` (all when `None`), then stably put available offers first.
pub fn select_offers<L, T>(
    lists: impl IntoIterator<Item = L>,
    price: impl FnMut(&T) -> f64,
    max_offers: Option<usize>,
    is_available: impl FnMut(&T) -> bool,
) -> Vec<T>
where
    L: IntoIterator<Item = T>,
{
    let merged = merge_by_price(lists, price);
    let mut out: Vec<T> = match max_offers {
        Some(n) => merged.take(n).collect(),
        None => merged.collect(),
    };
    sort_available_first(&mut out, is_available);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_list_order_and_breaks_ties_by_list() {
        let a = vec![(1.0, "a1"), (3.0, "a3"), (2.0, "a2-after-3")];
        let b = vec![(1.0, "b1"), (2.0, "b2")];
        let c: Vec<(f64, &str)> = vec![];
        let out: Vec<_> = merge_by_price([a, b, c], |x| x.0).map(|x| x.1).collect();
        assert_eq!(out, ["a1", "b1", "b2", "a3", "a2-after-3"]);
    }

    #[test]
    fn merge_matches_python_heapq_on_unsorted_lists() {
        // heapq.merge([1, .5], [1, .7], key=float) with the first list winning ties
        let out: Vec<f64> = merge_by_price([vec![1.0, 0.5], vec![1.0, 0.7]], |x| *x).collect();
        assert_eq!(out, [1.0, 0.5, 1.0, 0.7]);
    }

    #[test]
    fn select_cuts_then_sorts_available_first() {
        let aws = vec![(1.0, false), (4.0, true)];
        let gcp = vec![(2.0, true), (3.0, false), (5.0, true)];
        let out = select_offers([aws.clone(), gcp.clone()], |o| o.0, Some(4), |o| o.1);
        assert_eq!(out, [(2.0, true), (4.0, true), (1.0, false), (3.0, false)]);
        let all = select_offers([aws, gcp], |o| o.0, None, |o| o.1);
        assert_eq!(all.len(), 5);
        assert_eq!(all[2], (5.0, true));
    }
}
