"""ParetoNet search (paper section 3.3): sample configs from a declared space, train each
briefly and measure next-day AUC and throughput, fit a surrogate, score many more configs
with it, and train its Pareto front; plus a hypervolume comparison with random search and
NSGA-II at an equal budget of real trainings."""

from dhen_cvr.search.compare import CompareResult, compare_searches
from dhen_cvr.search.pareto import hypervolume, pareto_front
from dhen_cvr.search.paretonet import SearchResult, run_search
from dhen_cvr.search.space import Candidate, SearchSpace, load_space
from dhen_cvr.search.store import TrialRecord, TrialStore

__all__ = [
    "Candidate",
    "CompareResult",
    "SearchResult",
    "SearchSpace",
    "TrialRecord",
    "TrialStore",
    "compare_searches",
    "hypervolume",
    "load_space",
    "pareto_front",
    "run_search",
]
