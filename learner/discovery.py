"""New-domain discovery: cluster requests no agent served, keep clusters no agent covers, describe them.

Pure logic (numpy only, no I/O): the proposer service feeds it the requests no agent served (the router's
low-confidence ones and, from feedback, those whose answer was rated bad) and withdraws those an agent did serve (rated
good, or corrected to an existing agent); it gives the agents' card vectors, and turns what it finds into
`AgentProposed` events.

Clustering is average-linkage agglomerative over a sliding window, re-run every few new requests: MiniLM
requests of one topic are only ~0.2 cosine apart pairwise (cooking questions: 0.19 on average, cooking vs
travel: 0.06), so a one-pass leader clustering fragments a topic, while the mean pairwise similarity that average
linkage merges on separates the two well. The window is a few hundred requests, so the O(n²) matrix is cheap.
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[a-z][a-z']{2,}")
_STOP = frozenset(  # English function words and filler of questions, not topic terms
    """
    about above after again against all also and any are aren't because been before being below between both but
    can can't cannot could couldn't did didn't does doesn't doing don't down during each few for from further get
    gets getting got had hadn't has hasn't have haven't having her here hers herself him himself his how i'm i've
    into isn't it's its itself just let's like make makes many more most much must mustn't myself need needs nor
    not now off once only other ought our ours ourselves out over own same she should shouldn't some such than
    that that's the their theirs them themselves then there there's these they they're this those through too
    under until use used using very want was wasn't way we're were weren't what what's when where where's which
    while who who's whom why why's will with without won't would wouldn't you you're your yours yourself best
    good better know tell thing things one ones really still even ever every long take way well yes
    """.split()  # noqa: SIM905 -- a word list reads better as text than as 180 quoted strings
)


@dataclass(frozen=True)
class DiscoveryConfig:
    window: int = 400
    """Most recent unserved requests kept."""
    min_size: int = 20
    """Distinct requests (by topic words, see `question_key`) a cluster needs before it can become a proposal
    (`bench/discovery.py`: 10 gave 5 false proposals on 600 background questions, 20 gave 2; the new domain came
    after 22 and 35 of its requests). One question repeated is one request: the fault drill's ten questions, each
    asked 20 times, had made three proposals with cohesion 1.0."""
    min_cohesion: float = 0.18
    """Mean pairwise cosine the cluster's requests must reach (also where average linkage stops merging)."""
    clone_similarity: float = 0.3
    """A cluster whose centroid is this close to an existing agent's card vector is that agent's domain
    (measured: low-confidence FiQA finance questions 0.34 to the finance card, cooking 0.17 to the closest)."""
    duplicate_similarity: float = 0.33
    """A cluster whose centroid is this close to an earlier proposal's is the same topic or a sub-topic of it:
    never proposed twice. Measured between proposal centroids: two halves of one cooking burst 0.58; health
    sub-topics (symptoms, then medication, in `smolit bench adaptation`) 0.36; different topics (cooking, travel,
    finance) 0.19-0.26; the trivia topics `bench/discovery.py --auto` proposes (TV, songs, sports, seeds 42 and 7)
    -0.14-0.29. At 0.45 the medication cluster became a second health agent."""
    every: int = 4
    """Re-cluster after this many new requests."""
    examples: int = 12
    """Example requests a proposal carries (those nearest the centroid)."""
    terms: int = 3
    """Top terms in the name and description."""


@dataclass(frozen=True)
class Cluster:
    members: tuple[int, ...]
    """Window positions of the cluster's requests."""
    centroid: np.ndarray
    """Normalised mean of the members' embeddings."""
    cohesion: float
    """Mean pairwise cosine similarity of the members."""


@dataclass(frozen=True)
class NewDomain:
    """A coherent cluster no existing agent covers, described for a proposal."""

    texts: tuple[str, ...]
    centroid: np.ndarray
    cohesion: float
    terms: tuple[str, ...]
    name: str
    description: str
    examples: tuple[str, ...]
    system_prompt: str
    nearest_agent: str | None
    nearest_similarity: float | None
    named_by: str = "terms"


@dataclass(frozen=True)
class KnownDomain:
    """A coherent cluster that belongs to an existing agent (or an earlier proposal): no proposal."""

    size: int
    agent: str
    """The agent, or `proposal:<id>` for an earlier proposal's topic."""
    similarity: float


def average_linkage(vectors: np.ndarray, min_similarity: float) -> list[list[int]]:
    """Agglomerative clustering of normalised vectors; two clusters merge while their mean pairwise cosine
    similarity is at least `min_similarity`. Returns member indices per cluster, singletons included."""
    n = len(vectors)
    if n == 0:
        return []
    sim = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    np.fill_diagonal(sim, -np.inf)
    sizes = np.ones(n)
    members: list[list[int]] = [[i] for i in range(n)]
    while n > 1:
        i, j = divmod(int(np.argmax(sim)), n)
        if sim[i, j] < min_similarity:
            break
        # The mean similarity of the merged cluster to any other is the size-weighted mean of the two (UPGMA).
        row = (sizes[i] * sim[i] + sizes[j] * sim[j]) / (sizes[i] + sizes[j])
        sim[i, :], sim[:, i] = row, row
        sim[i, i] = -np.inf
        sim[j, :], sim[:, j] = -np.inf, -np.inf
        sizes[i] += sizes[j]
        members[i] += members[j]
        members[j] = []
    return [sorted(m) for m in members if m]


def cohesion_of(vectors: np.ndarray) -> float:
    """Mean pairwise cosine similarity of normalised vectors (1.0 for a single one)."""
    n = len(vectors)
    if n < 2:
        return 1.0
    total = np.asarray(vectors, dtype=np.float64).sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


def centroid_of(vectors: np.ndarray) -> np.ndarray:
    mean = np.asarray(vectors, dtype=np.float32).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def find_clusters(vectors: np.ndarray, min_size: int, min_cohesion: float) -> list[Cluster]:
    """Clusters of at least `min_size` members whose mean pairwise similarity reaches `min_cohesion`."""
    found = []
    for members in average_linkage(vectors, min_cohesion):
        if len(members) < min_size:
            continue
        rows = vectors[members]
        cohesion = cohesion_of(rows)
        if cohesion >= min_cohesion:
            found.append(Cluster(tuple(members), centroid_of(rows), cohesion))
    return sorted(found, key=lambda c: -len(c.members))


def words(text: str) -> list[str]:
    return [w for w in (m.strip("'") for m in _WORD.findall(text.lower())) if w not in _STOP and len(w) > 2]


def question_key(text: str) -> str:
    """What tells two requests apart as questions: their topic words, so repeats that differ only in case,
    punctuation, numbering or filler count once."""
    return " ".join(words(text))


def stem(word: str) -> str:
    """Crude suffix stripping, so `bake`, `baked` and `baking` count as one term."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def top_terms(cluster: Sequence[str], background: Sequence[str], k: int) -> list[str]:
    """Terms frequent in the cluster's texts and rare in the background (TF-IDF over documents): the share of
    cluster texts containing a term, times its inverse document frequency in cluster + background. Terms are
    compared by stem and shown in their most frequent form."""
    forms: Counter[tuple[str, str]] = Counter()
    in_cluster: Counter[str] = Counter()
    for text in cluster:
        found = words(text)
        forms.update((stem(w), w) for w in found)
        in_cluster.update({stem(w) for w in found})
    in_background = Counter(s for text in background for s in {stem(w) for w in words(text)})
    n = len(background) + len(cluster)
    scored = {
        s: (c / len(cluster)) * math.log((n + 1) / (in_background[s] + c + 1)) for s, c in in_cluster.items() if c > 1
    }
    best = sorted(scored.items(), key=lambda item: (-item[1], item[0]))[:k]
    shown = {}
    for (s, w), _count in sorted(forms.items(), key=lambda item: (-item[1], item[0][1])):
        shown.setdefault(s, w)
    return [shown[s] for s, _ in best]


def agent_name(terms: Sequence[str], taken: set[str]) -> str:
    """`term1-term2` (a valid agent name), made unique against `taken` with a number."""
    return unique_name("-".join(re.sub(r"[^a-z0-9]", "", t) for t in terms[:2] if t), taken)


def unique_name(base: str, taken: set[str]) -> str:
    """`base` as a valid agent name (`topic` when empty), made unique against `taken` with a number."""
    base = base or "topic"
    base = base[:40] if base[0].isalpha() else f"topic-{base}"[:40]
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def describe(name: str, terms: Sequence[str], examples: Sequence[str]) -> tuple[str, str]:
    """(description, system prompt) of a proposed agent from its top terms and example requests."""
    listed = ", ".join(terms[:-1]) + (f" and {terms[-1]}" if len(terms) > 1 else terms[0] if terms else "")
    description = f"Questions about {listed}, for example: {examples[0]}" if examples else f"Questions about {listed}."
    shown = "\n".join(f"- {e}" for e in examples[:4])
    prompt = (
        f"You are Smolit's {name} agent. You answer questions about {listed}, such as:\n{shown}\n"
        "Answer using only the numbered passages, cite them as [n], and say when they do not cover the question."
    )
    return description, prompt


class Discovery:
    """Sliding window of unserved requests; reports new and known domains as clusters form."""

    def __init__(self, config: DiscoveryConfig) -> None:
        self.config = config
        self._texts: deque[str] = deque(maxlen=config.window)
        self._vectors: deque[np.ndarray] = deque(maxlen=config.window)
        self._keys: deque[str | None] = deque(maxlen=config.window)
        # Requests already taken in or withdrawn: one request reaches discovery twice (its low-confidence decision,
        # then its bad rating) or out of order (the rating before the decision); it counts once, and a withdrawn
        # one never comes back. Bounded: a few windows' worth.
        self._seen: dict[str, None] = {}
        self._agents: tuple[str, ...] = ()
        self._agent_vectors = np.zeros((0, 0), dtype=np.float32)
        self._proposed: dict[str, np.ndarray] = {}
        self._since_last = 0

    def __len__(self) -> int:
        return len(self._texts)

    def set_agents(self, agents: Sequence[str], card_vectors: np.ndarray) -> None:
        """The agents that exist now, with their normalised card vectors (description + examples)."""
        self._agents = tuple(agents)
        self._agent_vectors = np.asarray(card_vectors, dtype=np.float32)

    def taken_names(self) -> set[str]:
        """Names a new agent must not take: existing agents and pending proposals."""
        return set(self._agents) | {k.removeprefix("pending:") for k in self._proposed}

    def remember_proposal(self, proposal_id: str, centroid: np.ndarray) -> None:
        self._proposed[proposal_id] = np.asarray(centroid, dtype=np.float32)

    def observe(self, text: str, vector: np.ndarray, key: str | None = None) -> list[NewDomain | KnownDomain]:
        """Add one unserved request (`key`: its request id, so it counts once); every `every` requests, cluster
        the window and report what formed.

        Requests of a reported cluster leave the window, so one topic yields one report; a new domain is also
        remembered, so the same topic later (e.g. after its agent was rejected) is never proposed twice.
        """
        if key is not None:
            if key in self._seen:
                return []
            self._remember(key)
        self._texts.append(text)
        self._vectors.append(np.asarray(vector, dtype=np.float32))
        self._keys.append(key)
        self._since_last += 1
        if self._since_last < self.config.every or len(self._texts) < self.config.min_size:
            return []
        self._since_last = 0
        return self.scan()

    def withdraw(self, key: str) -> bool:
        """An agent served this request after all (its answer was rated good, or the user named an existing agent
        that should have answered): it is no evidence of a new domain. Returns whether it was in the window; a
        request withdrawn before it arrives is never taken in."""
        self._remember(key)
        if key not in self._keys:
            return False
        self._keep([i for i, k in enumerate(self._keys) if k != key])
        return True

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > 4 * self.config.window:
            del self._seen[next(iter(self._seen))]

    def _keep(self, positions: Sequence[int]) -> None:
        texts, vectors, keys = list(self._texts), list(self._vectors), list(self._keys)
        self._texts.clear()
        self._vectors.clear()
        self._keys.clear()
        self._texts.extend(texts[i] for i in positions)
        self._vectors.extend(vectors[i] for i in positions)
        self._keys.extend(keys[i] for i in positions)

    def scan(self) -> list[NewDomain | KnownDomain]:
        cfg = self.config
        vectors = np.vstack(self._vectors)
        reports: list[NewDomain | KnownDomain] = []
        explained: set[int] = set()
        for cluster in find_clusters(vectors, cfg.min_size, cfg.min_cohesion):
            owner, similarity = self._owner(cluster.centroid)
            if owner is not None:
                explained.update(cluster.members)
                reports.append(KnownDomain(len(cluster.members), owner, similarity))
                continue
            if len({question_key(self._texts[i]) for i in cluster.members}) < cfg.min_size:
                continue  # one question asked again and again is no new topic (it stays until it slides out)
            explained.update(cluster.members)
            domain = self._describe(cluster, similarity)
            self._proposed[f"pending:{domain.name}"] = cluster.centroid
            reports.append(domain)
        if explained:
            self._keep([i for i in range(len(self._texts)) if i not in explained])
        return reports

    def _owner(self, centroid: np.ndarray) -> tuple[str | None, float]:
        """The agent (or earlier proposal) this cluster belongs to, else (None, nearest agent similarity)."""
        cfg, best = self.config, -1.0
        if len(self._agents):
            sims = self._agent_vectors @ centroid
            k = int(np.argmax(sims))
            best = float(sims[k])
            if best >= cfg.clone_similarity:
                return self._agents[k], best
        for proposal_id, other in self._proposed.items():
            similarity = float(other @ centroid)
            if similarity >= cfg.duplicate_similarity:
                return f"proposal:{proposal_id}", similarity
        return None, best

    def _describe(self, cluster: Cluster, nearest_similarity: float) -> NewDomain:
        cfg = self.config
        texts = [self._texts[i] for i in cluster.members]
        vectors = np.vstack([self._vectors[i] for i in cluster.members])
        members = set(cluster.members)
        background = [t for i, t in enumerate(self._texts) if i not in members]
        terms = tuple(top_terms(texts, background, cfg.terms)) or ("topic",)
        name = agent_name(terms, self.taken_names())
        order = np.argsort(-(vectors @ cluster.centroid), kind="stable")
        examples = tuple(dict.fromkeys(texts[i] for i in order))[: cfg.examples]
        description, prompt = describe(name, terms, examples)
        nearest = None
        if len(self._agents):
            nearest = self._agents[int(np.argmax(self._agent_vectors @ cluster.centroid))]
        return NewDomain(
            texts=tuple(texts),
            centroid=cluster.centroid,
            cohesion=cluster.cohesion,
            terms=terms,
            name=name,
            description=description,
            examples=examples,
            system_prompt=prompt,
            nearest_agent=nearest,
            nearest_similarity=nearest_similarity if nearest else None,
        )
