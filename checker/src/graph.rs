//! The dependency graph over transactions, its strongly connected
//! components, and the search for the shortest cycle of each anomaly class
//! inside them.
//!
//! Nodes are transactions (positions in the checker's transaction slice).
//! An edge `a → b` says that `a` must come before `b` in any order that
//! explains the history. One edge may stand for several relations (ww, wr,
//! rw, process, realtime); each keeps the first witness `W` the workload
//! gave for it, which the workload later turns into words.
//!
//! A history is serializable (under the relations added) only if the graph
//! is acyclic. Cycles live inside strongly connected components (Tarjan);
//! within each component the search looks, class by class, for the shortest
//! cycle of that class by breadth-first search from each edge that can
//! open it ("anchor"), over the product of the graph with a four-state
//! automaton that counts and places read-write edges. It tries data edges
//! alone first, then adds process edges, then real-time edges, so a cycle is
//! reported with the weakest model it violates.

use std::collections::{HashMap, VecDeque};

use crate::report::{CycleKind, CycleVia, Relation};

/// Breadth-first steps one search (one component, one class, one variant)
/// may take before it stops with the best cycle found so far. Components of
/// a badly broken history can hold most of the history; this keeps the
/// checker's time bounded (the component is still reported, see
/// [`find_cycles`]).
pub(crate) const CYCLE_SEARCH_STEPS_MAX: usize = 2_000_000;

/// No cycle is shorter: self-edges are never added.
const CYCLE_LEN_MIN: usize = 2;

/// Automaton states per node: two bits, below.
const STATES: usize = 4;
/// The last edge taken was read-write.
const PREV_RW: u8 = 1;
/// G-nonadjacent: a second read-write edge was taken.
/// G2-item: two adjacent read-write edges were seen.
const FLAG: u8 = 2;

const NONE: usize = usize::MAX;

/// Classes in the order they are searched and reported.
const KINDS: [CycleKind; 5] = [
    CycleKind::G0,
    CycleKind::G1c,
    CycleKind::GSingle,
    CycleKind::GNonadjacent,
    CycleKind::G2Item,
];

/// Non-read-write relations, in the order a step prefers to be explained
/// by: a data dependency says more than program or real-time order.
const NEUTRAL_RELATIONS: [Relation; 4] = [
    Relation::Ww,
    Relation::Wr,
    Relation::Process,
    Relation::Realtime,
];

/// One edge and the relations it stands for.
#[derive(Debug)]
pub(crate) struct Edge<W> {
    pub(crate) from: usize,
    pub(crate) to: usize,
    why: Vec<(Relation, W)>,
}

impl<W> Edge<W> {
    pub(crate) fn has(&self, relation: Relation) -> bool {
        self.why.iter().any(|(r, _)| *r == relation)
    }

    pub(crate) fn witness(&self, relation: Relation) -> Option<&W> {
        self.why
            .iter()
            .find(|(r, _)| *r == relation)
            .map(|(_, w)| w)
    }
}

/// A directed graph whose edges carry relations and their witnesses.
#[derive(Debug)]
pub(crate) struct Graph<W> {
    adj: Vec<Vec<usize>>,
    edges: Vec<Edge<W>>,
    index: HashMap<(usize, usize), usize>,
}

impl<W> Graph<W> {
    pub(crate) fn new(nodes: usize) -> Self {
        Graph {
            adj: vec![Vec::new(); nodes],
            edges: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds `relation` to the edge `from → to`, keeping the first witness
    /// per relation. Self-edges say nothing about order and are dropped.
    pub(crate) fn add(&mut self, from: usize, to: usize, relation: Relation, why: W) {
        if from == to {
            return;
        }
        let edges = &mut self.edges;
        let adj = &mut self.adj;
        let id = *self.index.entry((from, to)).or_insert_with(|| {
            edges.push(Edge {
                from,
                to,
                why: Vec::new(),
            });
            adj[from].push(edges.len() - 1);
            edges.len() - 1
        });
        let edge = &mut self.edges[id];
        if !edge.has(relation) {
            edge.why.push((relation, why));
        }
    }

    pub(crate) fn edge(&self, id: usize) -> &Edge<W> {
        &self.edges[id]
    }

    #[cfg(test)]
    pub(crate) fn edge_between(&self, from: usize, to: usize) -> Option<&Edge<W>> {
        self.index.get(&(from, to)).map(|&id| &self.edges[id])
    }

    /// Strongly connected components with at least two nodes (Tarjan,
    /// iterative so deep graphs cannot overflow the stack), each sorted.
    pub(crate) fn sccs(&self) -> Vec<Vec<usize>> {
        let n = self.adj.len();
        let mut index = vec![NONE; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack: Vec<usize> = Vec::new();
        // (node, next position in its adjacency list)
        let mut call: Vec<(usize, usize)> = Vec::new();
        let mut next_index = 0;
        let mut out = Vec::new();

        for root in 0..n {
            if index[root] != NONE {
                continue;
            }
            index[root] = next_index;
            low[root] = next_index;
            next_index += 1;
            stack.push(root);
            on_stack[root] = true;
            call.push((root, 0));

            while let Some(&(v, pos)) = call.last() {
                if let Some(&e) = self.adj[v].get(pos) {
                    call.last_mut().expect("the frame just read").1 += 1;
                    let w = self.edges[e].to;
                    if index[w] == NONE {
                        index[w] = next_index;
                        low[w] = next_index;
                        next_index += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        call.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                call.pop();
                if let Some(&(u, _)) = call.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    loop {
                        let w = stack.pop().expect("v is still on the stack");
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if component.len() >= CYCLE_LEN_MIN {
                        component.sort_unstable();
                        out.push(component);
                    }
                }
            }
        }
        out
    }
}

/// A cycle: edge ids with the relation each stands for, in order; the last
/// edge returns to the first edge's source.
#[derive(Debug)]
pub(crate) struct FoundCycle {
    pub(crate) kind: CycleKind,
    pub(crate) via: CycleVia,
    pub(crate) steps: Vec<(usize, Relation)>,
}

/// What [`find_cycles`] found.
#[derive(Debug)]
pub(crate) struct Cycles {
    pub(crate) cycles: Vec<FoundCycle>,
    /// Some search hit [`CYCLE_SEARCH_STEPS_MAX`]: a reported cycle may not
    /// be the shortest of its class, or a class may be missing from a
    /// component.
    pub(crate) exhausted: bool,
}

/// For every strongly connected component, the shortest cycle of each class
/// (at most one per class), trying the variants in `vias` in order and
/// keeping the first that has one. A component in which no class search
/// succeeds (budget, or only non-simple walks) still yields one cycle: the
/// shortest through its first node, classified by its edges. So every
/// component — every proof that no serial order exists — is reported.
pub(crate) fn find_cycles<W>(graph: &Graph<W>, vias: &[CycleVia]) -> Cycles {
    let components = graph.sccs();
    let mut search = Search::new(graph);
    for (c, component) in components.iter().enumerate() {
        for &v in component {
            search.comp[v] = c;
        }
    }
    let mut cycles = Vec::new();
    for (c, component) in components.iter().enumerate() {
        let before = cycles.len();
        for kind in KINDS {
            for &via in vias {
                if let Some(steps) = search.shortest(component, c, kind, via) {
                    let (found_kind, found_via) = classify(&steps);
                    debug_assert_eq!(found_kind, kind, "the automaton admits only its class");
                    cycles.push(FoundCycle {
                        kind: found_kind,
                        via: found_via,
                        steps,
                    });
                    break;
                }
            }
        }
        if cycles.len() == before
            && let Some(steps) = search.any_cycle(component, c)
        {
            let (kind, via) = classify(&steps);
            cycles.push(FoundCycle { kind, via, steps });
        }
    }
    Cycles {
        cycles,
        exhausted: search.exhausted,
    }
}

/// Names a cycle by its relations: read-write count and adjacency give the
/// class, the strongest non-data relation used gives the variant.
pub(crate) fn classify(steps: &[(usize, Relation)]) -> (CycleKind, CycleVia) {
    let n = steps.len();
    let is_rw = |i: usize| steps[i % n].1 == Relation::Rw;
    let rw = (0..n).filter(|&i| is_rw(i)).count();
    let kind = match rw {
        0 if steps.iter().any(|s| s.1 == Relation::Wr) => CycleKind::G1c,
        0 => CycleKind::G0,
        1 => CycleKind::GSingle,
        _ if (0..n).any(|i| is_rw(i) && is_rw(i + 1)) => CycleKind::G2Item,
        _ => CycleKind::GNonadjacent,
    };
    let via = if steps.iter().any(|s| s.1 == Relation::Realtime) {
        CycleVia::Realtime
    } else if steps.iter().any(|s| s.1 == Relation::Process) {
        CycleVia::Process
    } else {
        CycleVia::Data
    };
    (kind, via)
}

/// The relation a cycle of `kind` starts from: every cycle of the class has
/// one, so trying each such edge as the first finds them all.
fn anchor_relation(kind: CycleKind) -> Relation {
    match kind {
        CycleKind::G0 => Relation::Ww,
        CycleKind::G1c => Relation::Wr,
        CycleKind::GSingle | CycleKind::GNonadjacent | CycleKind::G2Item => Relation::Rw,
    }
}

/// The data relations a cycle of `kind` may use after its anchor.
fn data_allowed(kind: CycleKind, relation: Relation) -> bool {
    match relation {
        Relation::Ww => true,
        Relation::Wr => kind != CycleKind::G0,
        Relation::Rw => matches!(kind, CycleKind::GNonadjacent | CycleKind::G2Item),
        Relation::Process | Relation::Realtime => false,
    }
}

/// The order relations a variant adds.
fn order_allowed(via: CycleVia, relation: Relation) -> bool {
    match via {
        CycleVia::Data => false,
        CycleVia::Process => relation == Relation::Process,
        CycleVia::Realtime => matches!(relation, Relation::Process | Relation::Realtime),
    }
}

/// The state right after the anchor edge.
fn start_state(kind: CycleKind) -> u8 {
    match kind {
        CycleKind::GNonadjacent | CycleKind::G2Item => PREV_RW,
        _ => 0,
    }
}

/// The state after taking one more edge (`rw` says whether it is read-write),
/// or `None` if the class forbids it here.
fn step(kind: CycleKind, state: u8, rw: bool) -> Option<u8> {
    if !rw {
        return Some(state & FLAG);
    }
    match kind {
        CycleKind::GNonadjacent if state & PREV_RW != 0 => None,
        CycleKind::GNonadjacent => Some(PREV_RW | FLAG),
        CycleKind::G2Item if state & PREV_RW != 0 => Some(PREV_RW | FLAG),
        CycleKind::G2Item => Some(PREV_RW | (state & FLAG)),
        _ => None,
    }
}

/// Whether arriving back at the anchor's source in `state` closes a cycle of
/// `kind`. The anchor is read-write for the last two classes, so a last edge
/// that is read-write would sit next to it.
fn accepts(kind: CycleKind, state: u8) -> bool {
    match kind {
        CycleKind::GNonadjacent => state & PREV_RW == 0 && state & FLAG != 0,
        CycleKind::G2Item => state != 0,
        _ => true,
    }
}

/// The ways `kind` (with `via`) may take `edge` from `state`: at most one
/// non-read-write relation (the most telling one; they all act alike on the
/// automaton) and read-write.
fn transitions<W>(
    kind: CycleKind,
    via: CycleVia,
    edge: &Edge<W>,
    state: u8,
) -> [Option<(Relation, u8)>; 2] {
    let neutral = NEUTRAL_RELATIONS
        .into_iter()
        .find(|&r| edge.has(r) && (data_allowed(kind, r) || order_allowed(via, r)))
        .and_then(|r| step(kind, state, false).map(|s| (r, s)));
    let rw = if edge.has(Relation::Rw) && data_allowed(kind, Relation::Rw) {
        step(kind, state, true).map(|s| (Relation::Rw, s))
    } else {
        None
    };
    [neutral, rw]
}

/// Scratch space for the searches, sized once for the whole graph.
struct Search<'g, W> {
    graph: &'g Graph<W>,
    /// Component of each node, `NONE` outside every component.
    comp: Vec<usize>,
    /// `seen[node * STATES + state] == stamp` once visited in this BFS.
    seen: Vec<u32>,
    /// How each visited (node, state) was reached: previous slot, edge, relation.
    parent: Vec<(usize, usize, Relation)>,
    stamp: u32,
    /// Steps taken by the current search, against [`CYCLE_SEARCH_STEPS_MAX`].
    steps: usize,
    exhausted: bool,
}

impl<'g, W> Search<'g, W> {
    fn new(graph: &'g Graph<W>) -> Self {
        let n = graph.adj.len();
        Search {
            graph,
            comp: vec![NONE; n],
            seen: vec![0; n * STATES],
            parent: vec![(NONE, NONE, Relation::Ww); n * STATES],
            stamp: 0,
            steps: 0,
            exhausted: false,
        }
    }

    /// Starts a fresh visit without clearing `seen` (stamps, not booleans).
    fn next_stamp(&mut self) {
        if self.stamp == u32::MAX {
            self.seen.fill(0);
            self.stamp = 0;
        }
        self.stamp += 1;
    }

    /// The shortest simple cycle of `kind` using `via`'s relations inside
    /// component `comp`, or `None`.
    fn shortest(
        &mut self,
        component: &[usize],
        comp: usize,
        kind: CycleKind,
        via: CycleVia,
    ) -> Option<Vec<(usize, Relation)>> {
        let graph = self.graph;
        let anchor_rel = anchor_relation(kind);
        self.steps = 0;
        let mut best: Option<Vec<(usize, Relation)>> = None;
        for &v in component {
            for &e in &graph.adj[v] {
                let edge = &graph.edges[e];
                if self.comp[edge.to] != comp || !edge.has(anchor_rel) {
                    continue;
                }
                let best_len = best.as_ref().map_or(usize::MAX, Vec::len);
                if best_len <= CYCLE_LEN_MIN {
                    return best;
                }
                if let Some(steps) = self.bfs(comp, kind, via, e, anchor_rel, best_len)
                    && is_simple(graph, &steps)
                {
                    best = Some(steps);
                }
                if self.steps >= CYCLE_SEARCH_STEPS_MAX {
                    self.exhausted = true;
                    return best;
                }
            }
        }
        best
    }

    /// Breadth-first from the anchor's target back to its source, over
    /// (node, automaton state), keeping to the component. Returns a cycle
    /// shorter than `best_len`, if any. With one automaton state (G0, G1c,
    /// G-single) the result is a simple cycle; with more it may revisit a
    /// node in another state, which the caller rejects.
    fn bfs(
        &mut self,
        comp: usize,
        kind: CycleKind,
        via: CycleVia,
        anchor: usize,
        anchor_rel: Relation,
        best_len: usize,
    ) -> Option<Vec<(usize, Relation)>> {
        let graph = self.graph;
        let (start, target) = (graph.edges[anchor].to, graph.edges[anchor].from);
        self.next_stamp();
        let s0 = start_state(kind);
        let start_slot = start * STATES + usize::from(s0);
        self.seen[start_slot] = self.stamp;
        // (node, state, edges in the cycle so far, anchor included)
        let mut queue = VecDeque::from([(start, s0, 1usize)]);
        while let Some((v, s, len)) = queue.pop_front() {
            if self.steps >= CYCLE_SEARCH_STEPS_MAX {
                return None;
            }
            self.steps += 1;
            let slot = v * STATES + usize::from(s);
            if v == target {
                if accepts(kind, s) {
                    return Some(self.path(anchor, anchor_rel, start_slot, slot));
                }
                // Passing through the source would not give a simple cycle.
                continue;
            }
            if len + 1 >= best_len {
                continue;
            }
            for &e in &graph.adj[v] {
                let edge = &graph.edges[e];
                if self.comp[edge.to] != comp {
                    continue;
                }
                for (relation, s2) in transitions(kind, via, edge, s).into_iter().flatten() {
                    let next = edge.to * STATES + usize::from(s2);
                    if self.seen[next] == self.stamp {
                        continue;
                    }
                    self.seen[next] = self.stamp;
                    self.parent[next] = (slot, e, relation);
                    queue.push_back((edge.to, s2, len + 1));
                }
            }
        }
        None
    }

    /// The anchor followed by the BFS path from `start_slot` to `end_slot`.
    fn path(
        &self,
        anchor: usize,
        anchor_rel: Relation,
        start_slot: usize,
        end_slot: usize,
    ) -> Vec<(usize, Relation)> {
        let mut reversed = Vec::new();
        let mut slot = end_slot;
        while slot != start_slot {
            let (previous, edge, relation) = self.parent[slot];
            reversed.push((edge, relation));
            slot = previous;
        }
        let mut steps = vec![(anchor, anchor_rel)];
        steps.extend(reversed.into_iter().rev());
        steps
    }

    /// The shortest cycle through the component's first node, any relations,
    /// each step named by its most telling relation. Plain BFS: always
    /// simple, and one always exists in a component.
    fn any_cycle(&mut self, component: &[usize], comp: usize) -> Option<Vec<(usize, Relation)>> {
        let graph = self.graph;
        let root = *component.first()?;
        let label = |edge: &Edge<W>| {
            [
                Relation::Ww,
                Relation::Wr,
                Relation::Rw,
                Relation::Process,
                Relation::Realtime,
            ]
            .into_iter()
            .find(|&r| edge.has(r))
            .expect("every edge carries a relation")
        };
        self.next_stamp();
        let root_slot = root * STATES;
        self.seen[root_slot] = self.stamp;
        let mut queue = VecDeque::from([root]);
        while let Some(v) = queue.pop_front() {
            for &e in &graph.adj[v] {
                let edge = &graph.edges[e];
                if self.comp[edge.to] != comp {
                    continue;
                }
                if edge.to == root {
                    let mut steps = vec![(e, label(edge))];
                    let mut slot = v * STATES;
                    while slot != root_slot {
                        let (previous, e, relation) = self.parent[slot];
                        steps.push((e, relation));
                        slot = previous;
                    }
                    steps.reverse();
                    return Some(steps);
                }
                let next = edge.to * STATES;
                if self.seen[next] != self.stamp {
                    self.seen[next] = self.stamp;
                    self.parent[next] = (v * STATES, e, label(edge));
                    queue.push_back(edge.to);
                }
            }
        }
        None
    }
}

/// Whether a closed walk visits each node once.
fn is_simple<W>(graph: &Graph<W>, steps: &[(usize, Relation)]) -> bool {
    let mut nodes: Vec<usize> = steps.iter().map(|&(e, _)| graph.edges[e].from).collect();
    nodes.sort_unstable();
    nodes.windows(2).all(|w| w[0] != w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(nodes: usize, edges: &[(usize, usize, Relation)]) -> Graph<()> {
        let mut g = Graph::new(nodes);
        for &(from, to, relation) in edges {
            g.add(from, to, relation, ());
        }
        g
    }

    fn relations(g: &Graph<()>, cycle: &FoundCycle) -> Vec<(usize, usize, Relation)> {
        cycle
            .steps
            .iter()
            .map(|&(e, r)| (g.edge(e).from, g.edge(e).to, r))
            .collect()
    }

    use Relation::{Process, Realtime, Rw, Wr, Ww};

    #[test]
    fn tarjan_finds_components_and_ignores_acyclic_parts() {
        // 0 ⇄ 1, 2 → 3 → 4 → 2, 5 alone, 1 → 2 links the two components.
        let g = graph(
            6,
            &[
                (0, 1, Ww),
                (1, 0, Ww),
                (1, 2, Ww),
                (2, 3, Wr),
                (3, 4, Wr),
                (4, 2, Rw),
            ],
        );
        let mut sccs = g.sccs();
        sccs.sort();
        assert_eq!(sccs, vec![vec![0, 1], vec![2, 3, 4]]);
        assert!(
            graph(3, &[(0, 1, Ww), (1, 2, Ww), (0, 2, Ww)])
                .sccs()
                .is_empty()
        );
    }

    #[test]
    fn tarjan_survives_a_long_chain() {
        // A recursive Tarjan would overflow the stack here.
        let n = 200_000;
        let mut edges: Vec<(usize, usize, Relation)> = (0..n - 1).map(|i| (i, i + 1, Ww)).collect();
        edges.push((n - 1, 0, Ww));
        assert_eq!(graph(n, &edges).sccs().len(), 1);
    }

    #[test]
    fn merges_relations_and_drops_self_edges() {
        let g = graph(2, &[(0, 1, Ww), (0, 1, Process), (0, 1, Ww), (1, 1, Rw)]);
        let edge = g.edge_between(0, 1).unwrap();
        assert!(edge.has(Ww) && edge.has(Process) && !edge.has(Rw));
        assert!(g.edge_between(1, 1).is_none());
    }

    #[test]
    fn finds_the_shortest_cycle_of_each_class() {
        // A long G-single (0 →rw 1 →wr 2 →wr 3 →wr 0) and a short one
        // (0 →rw 1 →ww 0) in the same component: the short one is reported.
        let g = graph(
            4,
            &[(0, 1, Rw), (1, 2, Wr), (2, 3, Wr), (3, 0, Wr), (1, 0, Ww)],
        );
        let found = find_cycles(&g, &[CycleVia::Data]);
        let kinds: Vec<CycleKind> = found.cycles.iter().map(|c| c.kind).collect();
        // The ww edge 1 → 0 also closes 1 →ww 0 →rw 1; there is no G0 (one ww
        // edge is not a cycle) and no G1c (every cycle has the rw edge).
        assert_eq!(kinds, vec![CycleKind::GSingle]);
        assert_eq!(
            relations(&g, &found.cycles[0]),
            vec![(0, 1, Rw), (1, 0, Ww)]
        );
    }

    #[test]
    fn tells_nonadjacent_from_adjacent_read_write_edges() {
        let nonadjacent = graph(4, &[(0, 1, Rw), (1, 2, Wr), (2, 3, Rw), (3, 0, Wr)]);
        let found = find_cycles(&nonadjacent, &[CycleVia::Data]);
        assert_eq!(found.cycles.len(), 1);
        assert_eq!(found.cycles[0].kind, CycleKind::GNonadjacent);

        let adjacent = graph(3, &[(0, 1, Rw), (1, 2, Rw), (2, 0, Wr)]);
        let found = find_cycles(&adjacent, &[CycleVia::Data]);
        assert_eq!(found.cycles.len(), 1);
        assert_eq!(found.cycles[0].kind, CycleKind::G2Item);

        // Two rw edges that only touch across the wrap-around are adjacent.
        let wrapped = graph(3, &[(0, 1, Rw), (1, 2, Wr), (2, 0, Rw)]);
        let found = find_cycles(&wrapped, &[CycleVia::Data]);
        assert_eq!(found.cycles[0].kind, CycleKind::G2Item);
    }

    #[test]
    fn prefers_data_then_process_then_realtime() {
        // 0 →rw 1, and 1 → 0 is both process and realtime order: the cycle
        // needs order, and program order is the weaker claim.
        let g = graph(2, &[(0, 1, Rw), (1, 0, Realtime), (1, 0, Process)]);
        let all = [CycleVia::Data, CycleVia::Process, CycleVia::Realtime];
        let found = find_cycles(&g, &all);
        assert_eq!(found.cycles.len(), 1);
        assert_eq!(
            (found.cycles[0].kind, found.cycles[0].via),
            (CycleKind::GSingle, CycleVia::Process)
        );

        let g = graph(2, &[(0, 1, Rw), (1, 0, Realtime)]);
        let found = find_cycles(&g, &all);
        assert_eq!(found.cycles[0].via, CycleVia::Realtime);
        // Without real-time relations searched, the component still shows.
        let found = find_cycles(&g, &[CycleVia::Data]);
        assert_eq!(found.cycles.len(), 1);
        assert_eq!(found.cycles[0].via, CycleVia::Realtime);
    }
}
