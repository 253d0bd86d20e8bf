//! When a frame reached the client's socket, as the kernel stamped it (`SO_TIMESTAMPNS`).
//!
//! The generator shares two cores with the server and reads N sockets on one thread, so the time
//! at which it gets round to reading a frame includes its own queue: with 10,000 sockets the last
//! one is read tens of milliseconds after its bytes arrived. The kernel's receive timestamp is the
//! arrival itself, which is what a client on its own machine would see. Both are reported: the
//! read latency (what this generator saw) and the arrival latency (what the server delivered).
//!
//! A read that holds several frames carries the stamp of the last segment it consumed, so an
//! earlier frame in it is counted late, never early. The kernel turns stamping on in deferred work
//! when the first socket asks for it, so the first segments after that may come unstamped; the
//! fanout reports them as `unstamped`.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream whose reads keep the kernel's receive timestamp of the data they returned.
pub struct StampedTcp {
    // An `AsyncFd` rather than tokio's `TcpStream`: it lets a short read clear the readiness, as
    // tokio's own read does, which saves the `recvmsg` that would find the socket empty.
    inner: AsyncFd<std::net::TcpStream>,
    /// `CLOCK_REALTIME` nanoseconds of the last segment the last read consumed.
    last_arrival_ns: Option<u64>,
}

impl StampedTcp {
    /// Turns on receive timestamps for `inner` if `stamps`; without, reads carry none.
    pub fn new(inner: TcpStream, stamps: bool) -> io::Result<Self> {
        // Non-blocking already, as `into_std` leaves it.
        let inner = inner.into_std()?;
        if stamps {
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int.
            let rc = unsafe {
                libc::setsockopt(
                    inner.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self {
            // SAFETY: the std stream owns its fd; it stays open and the same until the AsyncFd,
            // which owns the stream, is dropped.
            inner: unsafe { AsyncFd::register(inner) }.map_err(io::Error::from)?,
            last_arrival_ns: None,
        })
    }

    /// The instant (on the monotonic clock) at which the data of the last read arrived, given
    /// `now` taken just after that read. `None` if the kernel gave no stamp or one that is not in
    /// the last ten seconds (a clock step).
    pub fn arrived_at(&self, now: Instant) -> Option<Instant> {
        let stamp = self.last_arrival_ns?;
        let real_now = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_nanos(),
        )
        .ok()?;
        // The two clocks are read microseconds apart, so their drift does not matter; an
        // offset fixed at the start of a run would carry minutes of NTP slewing.
        let age = Duration::from_nanos(real_now.checked_sub(stamp)?);
        (age < Duration::from_secs(10)).then(|| now.checked_sub(age))?
    }
}

/// One `recvmsg` into `dst`; the byte count and the `SCM_TIMESTAMPNS` stamp, if one came.
fn recv_stamped(fd: RawFd, dst: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    // Room for one timespec control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid (null name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: msg points at live buffers whose lengths it states.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within msg_control / msg_controllen, which the kernel set.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = u64::try_from(ts.tv_sec)
                    .ok()
                    .zip(u64::try_from(ts.tv_nsec).ok())
                    .map(|(s, ns)| s * 1_000_000_000 + ns);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((n, stamp))
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut ready = ready!(this.inner.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let len = dst.len();
            // try_io clears the readiness when the read would block.
            match ready.try_io(|s| recv_stamped(s.as_raw_fd(), dst)) {
                Ok(Ok((n, stamp))) => {
                    if n > 0 && n < len {
                        // Drained: the next read waits for the next readiness event.
                        ready.clear_ready();
                    }
                    buf.advance(n);
                    if stamp.is_some() {
                        this.last_arrival_ns = stamp;
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.inner.poll_write_ready(cx))?;
            let write = |s: &AsyncFd<std::net::TcpStream>| {
                let mut stream = s.get_ref();
                stream.write(buf)
            };
            if let Ok(result) = ready.try_io(write) {
                return Poll::Ready(result);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.inner.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_carry_the_kernel_arrival_stamp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let mut client = StampedTcp::new(client, true).expect("timestamps on");
        assert!(client.arrived_at(Instant::now()).is_none());
        // The first socket of the system that asks for stamps turns them on in deferred kernel
        // work; segments that arrive before it has run are not stamped.
        tokio::time::sleep(Duration::from_millis(200)).await;

        server.write_all(b"hello").await.expect("write");
        // Read well after the arrival: the stamp must say when the bytes came, not when read.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = [0u8; 16];
        let n = client.read(&mut got).await.expect("read");
        let now = Instant::now();
        assert_eq!(&got[..n], b"hello");
        let arrived = client.arrived_at(now).expect("a stamp");
        let waited = now - arrived;
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_secs(5),
            "arrived {waited:?} before the read"
        );

        client.write_all(b"back").await.expect("write through");
        let n = server.read(&mut got).await.expect("read back");
        assert_eq!(&got[..n], b"back");
    }
}
