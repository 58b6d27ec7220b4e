//! Matching the broker's answers to the deliveries published, before any is counted.
//!
//! A delivery is published `mandatory`: when no queue takes it, the broker sends it back
//! (`basic.return`) and then acknowledges it. lapin hands each returned message to whichever
//! publisher confirm it resolves next, and when one `basic.ack` covers several publishes
//! (`multiple`), it resolves them in no set order. So the return of one delivery may come with
//! another delivery's confirm, and the returned delivery's own confirm may say only "acked".
//! Counting each confirm on its own would then record a delivery that no queue took as
//! delivered.
//!
//! The returned message names its delivery (the [`super::egress::DELIVERY_HEADER`] header),
//! and the broker returns a message before it acknowledges it, so the return is handed out
//! with one of the confirms resolved by that same acknowledgement. Each of those was published
//! before the answer arrived. [`Confirms`] therefore holds every answer until every publish
//! made before the answer was collected has been collected too. By then, every return that
//! could name the delivery is known.

use std::collections::{BTreeSet, HashMap};

/// A message the broker returned, as one confirm carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Returned {
    /// The delivery it names, if its header could be read.
    pub delivery: Option<u64>,
    /// The broker's reply code (312: no route, 313: no consumers).
    pub code: u16,
}

impl Returned {
    /// The failure code recorded for the returned delivery's attempt.
    fn failure(&self) -> String {
        match self.code {
            312 => "amqp.no-route".into(),
            313 => "amqp.no-consumers".into(),
            code => format!("amqp.returned-{code}"),
        }
    }
}

/// The broker's answer to one publish, as its confirm resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Acknowledged. The returned message that came with the confirm may be another
    /// delivery's.
    Acked(Option<Returned>),
    /// Not acknowledged (a nack, a timeout, the channel lost): a failure with this code.
    Failed(String, Option<Returned>),
}

/// What an attempt came to, once certain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A queue took it.
    Delivered,
    /// It failed with this code, to be retried.
    Failed(String),
}

/// An answer held until it is certain.
#[derive(Debug)]
struct Held<T> {
    /// The last publish made when the answer was collected.
    watermark: u64,
    delivery: u64,
    item: T,
    answer: Answer,
}

/// The publishes of one channel whose answers are not counted yet. `T` is what the caller
/// keeps with each (the delivery).
#[derive(Debug)]
pub(crate) struct Confirms<T> {
    last_published: u64,
    /// Publishes whose answer has not been collected.
    unanswered: BTreeSet<u64>,
    /// Deliveries named by a returned message, with the failure code.
    returned: HashMap<u64, String>,
    held: Vec<Held<T>>,
}

impl<T> Default for Confirms<T> {
    fn default() -> Self {
        Confirms {
            last_published: 0,
            unanswered: BTreeSet::new(),
            returned: HashMap::new(),
            held: Vec::new(),
        }
    }
}

impl<T> Confirms<T> {
    /// Notes a publish of `delivery`; the number returned goes with its answer to
    /// [`Confirms::answered`]. A return of an earlier publish of the same delivery that came
    /// too late to count (after its confirm timed out) is forgotten.
    pub(crate) fn published(&mut self, delivery: u64) -> u64 {
        self.returned.remove(&delivery);
        self.last_published += 1;
        self.unanswered.insert(self.last_published);
        self.last_published
    }

    /// Takes the answer to publish `number` of `delivery`, and returns the attempts that are
    /// now certain, each with what the caller kept with it.
    pub(crate) fn answered(
        &mut self,
        number: u64,
        delivery: u64,
        item: T,
        answer: Answer,
    ) -> Vec<(T, Outcome)> {
        self.unanswered.remove(&number);
        let returned = match &answer {
            Answer::Acked(returned) | Answer::Failed(_, returned) => returned.as_ref(),
        };
        if let Some(returned) = returned {
            // A return whose header cannot be read is the confirm's own delivery's as far as
            // anyone can tell; the header is always written, so this does not happen.
            let named = returned.delivery.unwrap_or(delivery);
            self.returned.insert(named, returned.failure());
        }
        self.held.push(Held {
            watermark: self.last_published,
            delivery,
            item,
            answer,
        });
        self.certain()
    }

    /// Whether answers are held.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The held answers whose earlier publishes are all answered, counted.
    fn certain(&mut self) -> Vec<(T, Outcome)> {
        let first_unanswered = self.unanswered.first().copied().unwrap_or(u64::MAX);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|held| held.watermark < first_unanswered);
        self.held = waiting;
        ready
            .into_iter()
            .map(|held| {
                let returned = self.returned.remove(&held.delivery);
                let outcome = match (held.answer, returned) {
                    (Answer::Failed(code, _), _) => Outcome::Failed(code),
                    (Answer::Acked(_), Some(code)) => Outcome::Failed(code),
                    (Answer::Acked(_), None) => Outcome::Delivered,
                };
                (held.item, outcome)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_route(delivery: u64) -> Option<Returned> {
        Some(Returned {
            delivery: Some(delivery),
            code: 312,
        })
    }

    #[test]
    fn a_return_handed_to_another_confirm_fails_the_delivery_it_names() {
        // A (delivery 7) had no route, B (delivery 8) did; one ack covered both, and the
        // return of A came with B's confirm. Whichever answer is collected first, A fails and
        // B is delivered.
        for a_first in [true, false] {
            let mut confirms = Confirms::default();
            let a = confirms.published(7);
            let b = confirms.published(8);
            let mut counted = Vec::new();
            let answers = [
                (a, 7, "A", Answer::Acked(None)),
                (b, 8, "B", Answer::Acked(no_route(7))),
            ];
            let order: Vec<_> = if a_first {
                answers.into_iter().collect()
            } else {
                answers.into_iter().rev().collect()
            };
            for (number, delivery, item, answer) in order {
                counted.extend(confirms.answered(number, delivery, item, answer));
            }
            counted.sort_by_key(|(item, _)| *item);
            assert_eq!(
                counted,
                vec![
                    ("A", Outcome::Failed("amqp.no-route".into())),
                    ("B", Outcome::Delivered)
                ],
                "A collected first: {a_first}"
            );
            assert!(confirms.is_empty());
        }
    }

    #[test]
    fn an_answer_waits_for_every_publish_made_before_it_was_collected() {
        let mut confirms = Confirms::default();
        let first = confirms.published(1);
        let second = confirms.published(2);
        // The second is acked first: the first's confirm may still carry its return.
        assert!(
            confirms
                .answered(second, 2, 2, Answer::Acked(None))
                .is_empty()
        );
        let third = confirms.published(3);
        // The first's answer releases the second's; its own waits for the third, published
        // before it was collected.
        assert_eq!(
            confirms.answered(first, 1, 1, Answer::Failed("amqp.nack".into(), None)),
            vec![(2, Outcome::Delivered)]
        );
        assert_eq!(
            confirms.answered(third, 3, 3, Answer::Acked(no_route(3))),
            vec![
                (1, Outcome::Failed("amqp.nack".into())),
                (3, Outcome::Failed("amqp.no-route".into()))
            ]
        );
        assert!(confirms.is_empty());
    }

    #[test]
    fn a_return_is_forgotten_once_its_delivery_is_counted() {
        let mut confirms = Confirms::default();
        let n = confirms.published(5);
        let counted = confirms.answered(n, 5, (), Answer::Acked(no_route(5)));
        assert_eq!(counted, vec![((), Outcome::Failed("amqp.no-route".into()))]);
        // The delivery's next attempt is not failed by its earlier return.
        let n = confirms.published(5);
        assert_eq!(
            confirms.answered(n, 5, (), Answer::Acked(None)),
            vec![((), Outcome::Delivered)]
        );
    }

    #[test]
    fn a_return_that_comes_too_late_does_not_fail_a_later_publish() {
        let mut confirms = Confirms::default();
        // Delivery 4's confirm timed out; the broker's return of it came later, with
        // delivery 6's confirm.
        let n = confirms.published(4);
        let timed_out = Answer::Failed("amqp.confirm-timeout".into(), None);
        assert_eq!(
            confirms.answered(n, 4, 4, timed_out),
            vec![(4, Outcome::Failed("amqp.confirm-timeout".into()))]
        );
        let n = confirms.published(6);
        assert_eq!(
            confirms.answered(n, 6, 6, Answer::Acked(no_route(4))),
            vec![(6, Outcome::Delivered)]
        );
        // Delivery 4 is published again, and taken this time.
        let n = confirms.published(4);
        assert_eq!(
            confirms.answered(n, 4, 4, Answer::Acked(None)),
            vec![(4, Outcome::Delivered)]
        );
    }

    #[test]
    fn unreadable_headers_fail_the_confirms_own_delivery() {
        let mut confirms = Confirms::default();
        let n = confirms.published(9);
        let returned = Some(Returned {
            delivery: None,
            code: 313,
        });
        assert_eq!(
            confirms.answered(n, 9, (), Answer::Acked(returned)),
            vec![((), Outcome::Failed("amqp.no-consumers".into()))]
        );
    }
}
