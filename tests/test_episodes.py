"""Episodic sampling: invariants on the real Omniglot classes, determinism, jit == host, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmaml.core.types import Tasks
from jmaml.data.episodes import as_float, host_sample_tasks, sample_tasks, validate_episode
from jmaml.errors import JmamlError

EPISODE = dict(ways=5, shots=2, queries=3, meta_batch=16)


@pytest.fixture(scope="module")
def train(omniglot):
    """The real meta-training classes, on the device."""
    return jnp.asarray(omniglot.train)


def _ids(num_classes, drawings):
    """An array whose 'image' is its own (class, drawing) index: ``[C, D, 2]``."""
    c, d = np.meshgrid(np.arange(num_classes), np.arange(drawings), indexing="ij")
    return np.stack([c, d], -1).astype(np.int32)


def _check_invariants(tasks, ids_tasks, ways, shots, queries, meta_batch):
    """Invariants of one batch, given the sampled (class, drawing) ids of every example."""
    xs, ys, xq, yq = (np.asarray(a) for a in ids_tasks)
    assert xs.shape == (meta_batch, ways * shots, 2) and xq.shape == (meta_batch, ways * queries, 2)
    assert np.asarray(tasks.y_support).dtype == np.int32 and np.asarray(tasks.y_query).dtype == np.int32
    for b in range(meta_batch):
        assert sorted(ys[b].tolist()) == sorted(list(range(ways)) * shots)
        assert sorted(yq[b].tolist()) == sorted(list(range(ways)) * queries)
        classes = set()
        for label in range(ways):
            s, q = xs[b][ys[b] == label], xq[b][yq[b] == label]
            cls = set(s[:, 0]) | set(q[:, 0])
            assert len(cls) == 1, "every image of one label comes from one class"
            classes |= cls
            drawings_s, drawings_q = set(s[:, 1]), set(q[:, 1])
            assert len(drawings_s) == shots and len(drawings_q) == queries  # distinct drawings
            assert not drawings_s & drawings_q, "support and query share a drawing"
        assert len(classes) == ways, "classes of a task are distinct"


def _jit_sample(**episode):
    return jax.jit(lambda key, images: sample_tasks(key, images, **episode))


def test_shapes_and_invariants_on_omniglot(train, omniglot):
    key = jax.random.key(0)
    for ep in (EPISODE, dict(ways=20, shots=1, queries=19, meta_batch=4)):
        tasks = _jit_sample(**ep)(key, train)
        m, w, s, q = ep["meta_batch"], ep["ways"], ep["shots"], ep["queries"]
        assert isinstance(tasks, Tasks)
        assert tasks.x_support.shape == (m, w * s, 28, 28, 1) and tasks.x_query.shape == (m, w * q, 28, 28, 1)
        assert tasks.y_support.shape == (m, w * s) and tasks.y_query.shape == (m, w * q)
        assert tasks.x_support.dtype == jnp.uint8  # gathered as stored; as_float converts after
        ids = host_sample_tasks(key, _ids(*train.shape[:2]), **ep)  # same key -> same indices
        _check_invariants(tasks, ids, w, s, q, m)
        # label-image consistency on the real pixels: each example is the image its ids point to
        for x, i in ((tasks.x_support, ids.x_support), (tasks.x_query, ids.x_query)):
            np.testing.assert_array_equal(np.asarray(x), omniglot.train[i[..., 0], i[..., 1]])


def test_labels_are_shuffled_per_task():
    ids = jnp.asarray(_ids(10, 20))
    tasks = jax.tree.map(np.asarray, _jit_sample(ways=10, shots=1, queries=1, meta_batch=64)(
        jax.random.key(3), ids))
    # with all 10 classes in every task, the label -> class map is a random permutation per task
    maps = {tuple(tasks.x_support[b, np.argsort(tasks.y_support[b]), 0].tolist()) for b in range(64)}
    assert len(maps) > 50


def test_deterministic_for_a_key(train):
    f = _jit_sample(**EPISODE)
    a, b = f(jax.random.key(7), train), f(jax.random.key(7), train)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = f(jax.random.key(8), train)
    assert not np.array_equal(np.asarray(a.x_support), np.asarray(c.x_support))


def test_jit_equals_host(train, omniglot):
    f = _jit_sample(**EPISODE)
    for key in (jax.random.key(11), jax.random.PRNGKey(12)):  # typed and raw keys
        on_device = f(key, train)
        on_host = host_sample_tasks(key, omniglot.train, **EPISODE)
        assert isinstance(on_host.x_support, np.ndarray)
        for x, y in zip(on_device, on_host):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x), y)


def test_as_float_scales_uint8_inside_jit(train, omniglot):
    key = jax.random.key(4)
    got = jax.jit(lambda k, x: as_float(sample_tasks(k, x, **EPISODE)))(key, train)
    ref = host_sample_tasks(key, omniglot.train, **EPISODE)
    for g, r in zip(got, ref):
        if r.dtype == np.uint8:
            assert g.dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(g), r.astype(np.float64) / 255, rtol=0, atol=1e-7)
        else:
            np.testing.assert_array_equal(np.asarray(g), r)
    assert 0.0 <= float(got.x_query.min()) and float(got.x_query.max()) == 1.0
    floats = ref._replace(x_support=ref.x_support / 255.0, x_query=ref.x_query / 255.0)
    assert as_float(floats).x_support is floats.x_support  # floating images pass unchanged
    with pytest.raises(JmamlError, match="images must be uint8"):
        as_float(ref._replace(x_support=ref.x_support.astype(np.int32)))


def test_nothing_in_the_sampler_is_jitted():
    """The caller jits: tracing the sampler leaves no nested jit of an episodes function in the program."""
    import jmaml.data.episodes as episodes

    jaxpr = jax.make_jaxpr(lambda k, x: sample_tasks(k, x, **EPISODE))(jax.random.key(0), jnp.zeros((30, 20, 1)))
    nested = {eqn.params.get("name") for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name in ("jit", "pjit")}
    assert not nested & set(vars(episodes)), nested  # (jax.numpy's own jits, e.g. argsort, are fine)


# ---------------------------------------------------------------- bad input


def test_more_ways_than_classes(train):
    with pytest.raises(JmamlError, match=r"ways=4801 is more than the 4800 classes in the data"):
        _jit_sample(ways=4801, shots=1, queries=1, meta_batch=2)(jax.random.key(0), train)


def test_shots_plus_queries_above_drawings(train):
    with pytest.raises(JmamlError, match=r"shots \+ queries = 5 \+ 16 = 21 is more than the 20 examples"):
        _jit_sample(ways=5, shots=5, queries=16, meta_batch=2)(jax.random.key(0), train)
    with pytest.raises(JmamlError, match=r"shots \+ queries = 5 \+ 16 = 21"):
        host_sample_tasks(jax.random.key(0), np.zeros((10, 20, 2, 2, 1)), ways=5, shots=5, queries=16,
                          meta_batch=2)


def test_bad_sizes_listed_in_one_error():
    with pytest.raises(JmamlError) as e:
        validate_episode(3, 20, (28, 28, 1), ways=5, shots=0, queries=2.0, meta_batch=-1)
    msg = str(e.value)
    for part in ("shots must be positive, got 0", "queries must be a static Python int, got float",
                 "meta_batch must be positive, got -1", "ways=5 is more than the 3 classes"):
        assert part in msg
    with pytest.raises(JmamlError, match=r"images must be \[classes, examples_per_class"):
        sample_tasks(jax.random.key(0), jnp.zeros((10, 20)), ways=2, shots=1, queries=1, meta_batch=1)
    with pytest.raises(JmamlError, match="ways must be a static Python int"):
        host_sample_tasks(jax.random.key(0), np.zeros((10, 20, 1)), ways=True, shots=1, queries=1,
                          meta_batch=1)
