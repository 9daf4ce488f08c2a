"""Wake-one long-polls: one notification wakes one waiter, and a wake is never dropped."""

from __future__ import annotations

from api.notifier import Notifier

KEY = "t1:wf.a"


def notify(n: Notifier, key: str = KEY) -> None:
    n._on_notify(None, 0, "cairn_queue", key)


def test_one_notification_wakes_the_longest_waiting_poll_only() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ("wf.a",)) as first, n.subscribe("t1", ("wf.a",)) as second:
        notify(n)
        assert (first.event.is_set(), second.event.is_set()) == (True, False)
        notify(n)  # the first is already woken: the next notification goes to the other
        assert second.event.is_set()


def test_other_tenants_and_actions_are_not_woken() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t2", ("wf.a",)) as other_tenant, n.subscribe("t1", ("wf.b",)) as other:
        notify(n)
        assert not other_tenant.event.is_set() and not other.event.is_set()


def test_a_woken_poll_that_leaves_without_claiming_hands_the_wake_on() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ("wf.a",)) as stays:
        with n.subscribe("t1", ("wf.a",)) as leaves:
            leaves.begin_claim()
            leaves.end_claim(more=False)
            stays.begin_claim()  # stays is busy claiming: leaves is the idle one to wake
            notify(n)
            assert leaves.event.is_set() and not stays.event.is_set()
        assert stays.event.is_set()


def test_a_claim_that_filled_its_cap_after_a_wake_wakes_another() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ("wf.a",)) as a, n.subscribe("t1", ("wf.a",)) as b:
        notify(n)
        a.begin_claim()
        a.end_claim(more=False)  # took less than it could: the queue is empty
        assert not b.event.is_set()
        notify(n)
        assert b.event.is_set()
        b.begin_claim()
        b.end_claim(more=True)  # took all it could: there may be more
        assert a.event.is_set()


def test_a_full_claim_nobody_woke_does_not_wake_others() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ("wf.a",)) as a, n.subscribe("t1", ("wf.a",)) as b:
        a.begin_claim()
        a.end_claim(more=True)
        assert not b.event.is_set()


def test_when_every_waiter_is_claiming_one_is_told_to_claim_again() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ("wf.a",)) as a:
        a.begin_claim()
        notify(n)
        assert a.event.is_set()


def test_subscriptions_are_forgotten_on_exit_and_can_change_actions() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ()) as a:
        notify(n)
        assert not a.event.is_set()
        a.set_actions(("wf.a",))
        notify(n)
        assert a.event.is_set()
    assert n._waiters == {}
    notify(n)  # nobody is waiting: nothing to wake, nothing raised


def test_reconnect_wakes_everyone() -> None:
    n = Notifier("postgresql://localhost/x")
    with n.subscribe("t1", ("wf.a",)) as a, n.subscribe("t1", ("wf.b",)) as b:
        n.wake_all()
        assert a.event.is_set() and b.event.is_set()
