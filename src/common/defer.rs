//! Letting the tasks already queued on this thread run before the current one goes on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Puts the current task at the back of its thread's run queue, once, so that the tasks
/// queued already run first. `tokio::task::yield_now` instead waits for the scheduler's next
/// look at the sockets: one more `epoll_wait` every time.
pub(crate) async fn behind_queued_tasks() {
    YieldOnce(false).await
}

struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        // A task woken while it runs goes to the back of the queue, not first in line.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
