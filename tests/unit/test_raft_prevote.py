"""Pre-vote decisions: when a member grants one, and when an asker has won."""

from flotilla.manager.raft.prevote import PreVote


def grant(pv, term=6, last=(5, 100), my_term=5, my_last=(5, 100), leading=False, now=10.0):
    return pv.grant(term=term, last=last, my_term=my_term, my_last=my_last, leading=leading,
                    now=now)


def test_a_member_without_a_leader_grants_an_asker_as_complete_as_itself():
    pv = PreVote(election_min=0.3)
    assert grant(pv)
    assert grant(pv, last=(5, 101))
    assert grant(pv, last=(6, 1))


def test_an_asker_behind_in_its_log_is_refused():
    pv = PreVote(election_min=0.3)
    assert not grant(pv, last=(5, 99))
    assert not grant(pv, last=(4, 500))


def test_an_asker_whose_term_is_not_above_ours_is_refused():
    pv = PreVote(election_min=0.3)
    assert not grant(pv, term=5)
    assert not grant(pv, term=4, my_term=5)


def test_a_member_that_hears_from_a_leader_refuses():
    pv = PreVote(election_min=0.3)
    pv.heard_from_leader(9.9)
    assert not grant(pv, now=10.0)
    assert not grant(pv, now=10.15)
    assert grant(pv, now=10.25)
    assert not grant(pv, now=10.25, leading=True)


def test_a_majority_wins_once_and_counts_only_the_current_round():
    pv = PreVote(election_min=0.3)
    pv.start(7, "me")
    assert not pv.answer(7, False, "a", members=5)
    assert not pv.answer(6, True, "a", members=5)      # an earlier round
    assert not pv.answer(7, True, "a", members=5)      # 2 of 5
    assert not pv.answer(7, True, "a", members=5)      # the same voter twice
    assert pv.answer(7, True, "b", members=5)          # 3 of 5
    assert pv.won_term == 7
    assert not pv.answer(7, True, "c", members=5)      # won already
    pv.start(8, "me")
    assert pv.won_term is None and pv.granted == {"me"}


def test_in_a_cluster_of_three_one_grant_is_enough():
    pv = PreVote(election_min=0.3)
    pv.start(2, "me")
    assert pv.answer(2, True, "a", members=3)
