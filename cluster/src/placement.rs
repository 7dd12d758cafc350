//! Where shards' replicas go: a pure function of the cluster map, run by
//! the metadata group's leader. It repairs shards whose replicas sit on
//! members that are no longer active (draining, removed) or that miss
//! replicas, then evens out replica counts, then preferred leaders (each
//! shard's first replica), changing a few shards at a time.

use crate::types::NodeId;
use std::collections::{BTreeMap, BTreeSet};
use troupe_storage::{ClusterMap, MemberState};

/// The placement after the next step of moves, or `None` when the map's
/// placement needs no change. Shards in `moving` (their replicas not yet
/// where the map places them) are left alone, and at most `max_moving`
/// shards are moving once this step is taken. Reordering a shard's
/// replicas (a leadership transfer) is not a move.
pub fn next_step(
    map: &ClusterMap,
    moving: &BTreeSet<u32>,
    max_moving: usize,
) -> Option<Vec<Vec<NodeId>>> {
    let active = map.in_state(MemberState::Active);
    if active.is_empty() {
        return None;
    }
    let factor = (map.replication_factor as usize).min(active.len());
    let mut placement = map.placement.clone();
    let mut budget = max_moving.saturating_sub(moving.len());
    let free = |shard: u32| !moving.contains(&shard);

    // Repair: replicas only on active members, as many as the factor asks.
    for shard in (0..map.shards).filter(|s| free(*s)) {
        if budget == 0 {
            break;
        }
        let replicas = &placement[shard as usize];
        let mut kept: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|n| active.contains(n))
            .collect();
        if kept.len() == factor && kept.len() == replicas.len() {
            continue;
        }
        while kept.len() > factor {
            let most = *kept
                .iter()
                .max_by_key(|n| (load(&placement, **n), **n))
                .expect("kept is not empty");
            kept.retain(|n| *n != most);
        }
        while kept.len() < factor {
            let least = *active
                .iter()
                .filter(|n| !kept.contains(n))
                .min_by_key(|n| (load(&placement, **n), **n))
                .expect("fewer kept than active members");
            kept.push(least);
        }
        placement[shard as usize] = kept;
        budget -= 1;
    }

    // Even out replica counts: move one replica at a time from the most
    // loaded member to the least loaded.
    let mut moved = BTreeSet::new();
    while budget > 0 {
        let loads: BTreeMap<NodeId, usize> =
            active.iter().map(|n| (*n, load(&placement, *n))).collect();
        let (most, high, least, low) = extremes(&loads);
        if high <= low + 1 {
            break;
        }
        // Prefer a shard the loaded member does not lead, so that no
        // leadership moves with the replica.
        let candidates = (0..map.shards).filter(|s| {
            let replicas = &placement[*s as usize];
            free(*s) && !moved.contains(s) && replicas.contains(&most) && !replicas.contains(&least)
        });
        let Some(shard) = candidates.min_by_key(|s| placement[*s as usize][0] == most) else {
            break;
        };
        // The newcomer goes last: it is not the preferred leader while it
        // catches up.
        let replicas = &mut placement[shard as usize];
        replicas.retain(|n| *n != most);
        replicas.push(least);
        moved.insert(shard);
        budget -= 1;
    }

    // Even out preferred leaders by reordering replicas (a transfer), once
    // every replica is in place: leadership follows the data, so a new
    // member leads nothing while it still catches up. At most `max_moving`
    // per step: a node handed many leaderships at once activates them all
    // at once, and requests to those shards wait meanwhile.
    let settled = moving.is_empty() && placement == map.placement;
    let rounds = if settled { max_moving.max(1) } else { 0 };
    for _ in 0..rounds {
        let mut leads: BTreeMap<NodeId, usize> = active.iter().map(|n| (*n, 0)).collect();
        for replicas in &placement {
            if let Some(count) = replicas.first().and_then(|first| leads.get_mut(first)) {
                *count += 1;
            }
        }
        let (most, high, least, low) = extremes(&leads);
        if high <= low + 1 {
            break;
        }
        let Some(shard) = (0..map.shards).find(|s| {
            let replicas = &placement[*s as usize];
            replicas.first() == Some(&most) && replicas.contains(&least)
        }) else {
            break;
        };
        let replicas = &mut placement[shard as usize];
        let at = replicas.iter().position(|n| *n == least).expect("contains");
        replicas.swap(0, at);
    }
    (placement != map.placement).then_some(placement)
}

/// The member with the highest count (the highest id among equals) and
/// the one with the lowest (the lowest id among equals), with their counts.
fn extremes(counts: &BTreeMap<NodeId, usize>) -> (NodeId, usize, NodeId, usize) {
    let (most, high) = counts
        .iter()
        .max_by_key(|(n, c)| (**c, **n))
        .map_or((0, 0), |(n, c)| (*n, *c));
    let (least, low) = counts
        .iter()
        .min_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))
        .map_or((0, 0), |(n, c)| (*n, *c));
    (most, high, least, low)
}

/// Replicas placed on `node`.
fn load(placement: &[Vec<NodeId>], node: NodeId) -> usize {
    placement.iter().filter(|r| r.contains(&node)).count()
}

/// Shards whose replica sets differ between two placements (reorders
/// aside).
pub fn moved_shards(before: &[Vec<NodeId>], after: &[Vec<NodeId>]) -> BTreeSet<u32> {
    let set = |r: &Vec<NodeId>| r.iter().copied().collect::<BTreeSet<_>>();
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| set(b) != set(a))
        .map(|(s, _)| s as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_storage::MemberRecord;

    fn member(id: NodeId, state: MemberState) -> MemberRecord {
        MemberRecord {
            id,
            state,
            raft_addr: String::new(),
            http_addr: String::new(),
            native_addr: String::new(),
            control_addr: None,
        }
    }

    /// The first map of three members, shards rotated over them.
    fn three(shards: u32) -> ClusterMap {
        ClusterMap {
            epoch: 1,
            members: (1..=3).map(|id| member(id, MemberState::Active)).collect(),
            shards,
            replication_factor: 3,
            placement: (0..shards)
                .map(|s| (0..3).map(|k| (s as u64 + k) % 3 + 1).collect())
                .collect(),
        }
    }

    /// Steps until nothing changes, each step's moves taken at once.
    fn settle(map: &mut ClusterMap, max_moving: usize) -> usize {
        let mut steps = 0;
        while let Some(next) = next_step(map, &BTreeSet::new(), max_moving) {
            assert!(moved_shards(&map.placement, &next).len() <= max_moving);
            let leaders_changed = (map.placement.iter().zip(&next))
                .filter(|(before, after)| before[0] != after[0])
                .count();
            assert!(
                leaders_changed <= max_moving.max(1),
                "{leaders_changed} leaders at once"
            );
            map.placement = next;
            steps += 1;
            assert!(steps < 100, "placement does not settle");
        }
        steps
    }

    fn counts(map: &ClusterMap) -> (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>) {
        let (mut replicas, mut leads) = (BTreeMap::new(), BTreeMap::new());
        for r in &map.placement {
            *leads.entry(r[0]).or_default() += 1;
            for n in r {
                *replicas.entry(*n).or_default() += 1;
            }
        }
        (replicas, leads)
    }

    #[test]
    fn a_balanced_map_stays_as_it_is() {
        assert_eq!(next_step(&three(8), &BTreeSet::new(), 2), None);
    }

    #[test]
    fn a_joined_member_is_handed_its_leaderships_a_few_at_a_time() {
        // 16 shards over 4 members: the newcomer leads 4 in the end, and
        // `settle` checks that no step hands over more than 2 at once.
        let mut map = three(16);
        map.members.push(member(4, MemberState::Active));
        settle(&mut map, 2);
        let (_, leads) = counts(&map);
        assert_eq!(leads.values().copied().collect::<Vec<_>>(), [4, 4, 4, 4]);
    }

    #[test]
    fn a_joined_member_takes_its_share_a_few_shards_at_a_time() {
        let mut map = three(8);
        map.members.push(member(4, MemberState::Active));
        // Leadership follows the data: while replicas still move, the new
        // member is nobody's preferred leader.
        let first = next_step(&map, &BTreeSet::new(), 2).unwrap();
        assert!(first.iter().any(|r| r.contains(&4)));
        assert!(first.iter().all(|r| r[0] != 4), "{first:?}");
        let mut moving_map = map.clone();
        moving_map.placement = first;
        let moving: BTreeSet<u32> = [0].into();
        if let Some(next) = next_step(&moving_map, &moving, 2) {
            assert!(next.iter().all(|r| r[0] != 4), "{next:?}");
        }
        let steps = settle(&mut map, 2);
        assert!(steps >= 3, "24 replicas, 6 for the new member, 2 per step");
        let (replicas, leads) = counts(&map);
        assert_eq!(replicas.values().copied().collect::<Vec<_>>(), [6, 6, 6, 6]);
        assert_eq!(leads.values().copied().collect::<Vec<_>>(), [2, 2, 2, 2]);
        assert!(
            map.placement
                .iter()
                .all(|r| { r.len() == 3 && r.iter().collect::<BTreeSet<_>>().len() == 3 })
        );
    }

    #[test]
    fn a_draining_member_ends_up_holding_nothing_at_full_replication() {
        let mut map = three(8);
        map.members.push(member(4, MemberState::Active));
        settle(&mut map, 2);
        map.members[1].state = MemberState::Draining;
        settle(&mut map, 2);
        let (replicas, leads) = counts(&map);
        assert!(!replicas.contains_key(&2) && !leads.contains_key(&2));
        assert_eq!(replicas.values().copied().collect::<Vec<_>>(), [8, 8, 8]);
        assert!(map.placement.iter().all(|r| r.len() == 3));
    }

    #[test]
    fn shards_still_moving_are_left_alone_and_count_against_the_limit() {
        let mut map = three(8);
        map.members.push(member(4, MemberState::Active));
        let moving: BTreeSet<u32> = [0, 1].into();
        assert_eq!(next_step(&map, &moving, 2), None, "the limit is reached");
        let next = next_step(&map, &moving, 3).unwrap();
        let moved = moved_shards(&map.placement, &next);
        assert_eq!(moved.len(), 1);
        assert!(moved.is_disjoint(&moving));
    }

    #[test]
    fn fewer_active_members_than_the_factor_keep_one_replica_on_each() {
        let mut map = three(4);
        map.members[2].state = MemberState::Removed;
        settle(&mut map, 4);
        assert!(map.placement.iter().all(|r| {
            let mut sorted = r.clone();
            sorted.sort();
            sorted == [1, 2]
        }));
    }
}
