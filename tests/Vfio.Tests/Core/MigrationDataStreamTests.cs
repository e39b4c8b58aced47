using System.Buffers;
using Vfio.Interop;

namespace Vfio.Tests.Core;

public class MigrationDataStreamTests
{
    private static unsafe (FileDescriptorHandle Read, FileDescriptorHandle Write) Pipe()
    {
        // fds: stack memory of this frame.
        int* fds = stackalloc int[2];
        Assert.Equal(0, Libc.Pipe2(fds, Libc.O_CLOEXEC));
        return (new FileDescriptorHandle(fds[0]), new FileDescriptorHandle(fds[1]));
    }

    private static unsafe (FileDescriptorHandle A, FileDescriptorHandle B) SocketPair()
    {
        // fds: stack memory of this frame.
        int* fds = stackalloc int[2];
        Assert.Equal(0, Libc.SocketPair(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0, fds));
        return (new FileDescriptorHandle(fds[0]), new FileDescriptorHandle(fds[1]));
    }

    private static byte[] Pattern(int n)
    {
        var data = new byte[n];
        for (int i = 0; i < n; i++) data[i] = (byte)(i * 31 + (i >> 8));
        return data;
    }

    /// <summary>Runs WriteAll on its own thread (the reader runs on the test thread); returns a join function.</summary>
    private static Func<int> StartWriter(FileDescriptorHandle handle, string owner, byte[] data)
    {
        int calls = -1;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                using var ws = new MigrationDataStream(handle, owner);
                calls = ws.WriteAll(data);
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        return () =>
        {
            Assert.True(thread.Join(TimeSpan.FromSeconds(30)), "the writer did not finish");
            if (failure is not null) throw new InvalidOperationException("writer failed", failure);
            return calls;
        };
    }

    private static byte[] ReadToEnd(MigrationDataStream stream, int bufferSize)
    {
        var result = new MemoryStream();
        var buffer = new byte[bufferSize];
        while (true)
        {
            var r = stream.Read(buffer);
            if (r.Status == DataReadStatus.EndOfStream) return result.ToArray();
            Assert.Equal(DataReadStatus.Data, r.Status);
            result.Write(buffer, 0, r.Bytes);
        }
    }

    [Fact]
    public void Pipe_RoundTripsAMegabyteAndEndsWithEndOfStream()
    {
        var (r, w) = Pipe();
        var data = Pattern(1 << 20);
        using var reader = new MigrationDataStream(r, "pipe-reader");
        var join = StartWriter(w, "pipe-writer", data);
        var got = ReadToEnd(reader, 4096 * 3 + 1);
        Assert.True(join() >= 1);
        Assert.Equal(data, got);
        // A further read stays at the end.
        Assert.Equal(DataReadStatus.EndOfStream, reader.Read(new byte[16]).Status);
    }

    [Fact]
    public void SocketPair_RoundTripsThreeMegabytes()
    {
        // Blocking stream sockets take a large write whole (blocking until the reader drains it);
        // partial writes are covered with injected results below.
        var (a, b) = SocketPair();
        var data = Pattern(3 << 20);
        using var reader = new MigrationDataStream(b, "socket-reader");
        var join = StartWriter(a, "socket-writer", data);
        var got = ReadToEnd(reader, 65536);
        Assert.True(join() >= 1);
        Assert.Equal(data, got);
    }

    [Fact]
    public void Pipe_WriteToAClosedReader_FailsWithEpipeKeepingOperationAndOwner()
    {
        var (r, w) = Pipe();
        r.Dispose();
        using var ws = new MigrationDataStream(w, "0000:af:00.2");
        var e = Assert.Throws<VfioException>(() => ws.WriteAll(new byte[100]));
        Assert.Equal(Libc.EPIPE, e.Errno);
        Assert.Contains("write(migration data fd of 0000:af:00.2)", e.Message);
        Assert.Contains("EPIPE", e.Message);
        Assert.Contains("0 of 100 bytes written", e.Message);
    }

    [Fact]
    public void PrecopyInfo_OnANonVfioFd_ReportsTheIoctlAndErrno()
    {
        var (r, w) = Pipe();
        using var rs = new MigrationDataStream(r, "sim0");
        w.Dispose();
        var e = Assert.Throws<VfioException>(() => rs.GetPrecopyInfo());
        Assert.Equal(Libc.ENOTTY, e.Errno);
        Assert.Equal("VFIO_MIG_GET_PRECOPY_INFO on sim0", e.Operation);
    }

    /// <summary>Scripted syscall results: each entry is (return value, errno); data comes from/goes to a buffer.</summary>
    private sealed class ScriptedSyscalls : IDataFdSyscalls
    {
        public readonly Queue<(nint Result, int Errno)> Reads = new();
        public readonly Queue<(nint Result, int Errno)> Writes = new();
        public readonly ArrayBufferWriter<byte> Written = new();
        public int ReadCalls, WriteCalls;

        public unsafe nint Read(FileDescriptorHandle fd, byte* buffer, nuint count, out int errno)
        {
            ReadCalls++;
            var (n, e) = Reads.Dequeue();
            errno = e;
            for (int i = 0; i < n; i++) buffer[i] = (byte)(i + 1);
            return n;
        }

        public unsafe nint Write(FileDescriptorHandle fd, byte* buffer, nuint count, out int errno)
        {
            WriteCalls++;
            var (n, e) = Writes.Dequeue();
            errno = e;
            if (n > 0)
            {
                n = Math.Min(n, (nint)count);
                Written.Write(new ReadOnlySpan<byte>(buffer, (int)n));
            }
            return n;
        }
    }

    private static MigrationDataStream Scripted(ScriptedSyscalls sys)
    {
        var (r, _) = Pipe();
        return new MigrationDataStream(r, "fake0", sys);
    }

    [Fact]
    public void Read_RetriesEintr_ReportsEnomsgAsNoDataForNow_AndZeroAsEnd()
    {
        var sys = new ScriptedSyscalls();
        sys.Reads.Enqueue((-1, Libc.EINTR));
        sys.Reads.Enqueue((-1, Libc.EINTR));
        sys.Reads.Enqueue((5, 0));
        sys.Reads.Enqueue((-1, Libc.ENOMSG));
        sys.Reads.Enqueue((3, 0));
        sys.Reads.Enqueue((0, 0));
        using var s = Scripted(sys);
        var buffer = new byte[16];
        Assert.Equal(new DataRead(5, DataReadStatus.Data), s.Read(buffer));
        Assert.Equal(3, sys.ReadCalls);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5 }, buffer[..5]);
        Assert.Equal(new DataRead(0, DataReadStatus.NoDataForNow), s.Read(buffer));
        Assert.Equal(new DataRead(3, DataReadStatus.Data), s.Read(buffer));
        Assert.Equal(new DataRead(0, DataReadStatus.EndOfStream), s.Read(buffer));
    }

    [Fact]
    public void Read_Enodev_AfterTheStateWasLeft_Throws()
    {
        var sys = new ScriptedSyscalls();
        sys.Reads.Enqueue((-1, Libc.ENODEV));
        using var s = Scripted(sys);
        var e = Assert.Throws<VfioException>(() => s.Read(new byte[8]));
        Assert.Equal(Libc.ENODEV, e.Errno);
        Assert.Equal("ENODEV", e.ErrnoName);
        Assert.Contains("read(migration data fd of fake0)", e.Message);
    }

    [Fact]
    public void Read_EmptyBuffer_IsRefused()
    {
        using var s = Scripted(new ScriptedSyscalls());
        Assert.Throws<ArgumentException>(() => s.Read([]));
    }

    [Fact]
    public void WriteAll_CompletesPartialWrites_RetriesEintr_InOrder()
    {
        var sys = new ScriptedSyscalls();
        sys.Writes.Enqueue((3, 0));
        sys.Writes.Enqueue((-1, Libc.EINTR));
        sys.Writes.Enqueue((4, 0));
        sys.Writes.Enqueue((100, 0));
        using var s = Scripted(sys);
        var data = Pattern(10);
        Assert.Equal(4, s.WriteAll(data));
        Assert.Equal(data, sys.Written.WrittenSpan.ToArray());
        Assert.Empty(sys.Writes);
    }

    [Fact]
    public void WriteAll_ZeroProgressIsEio_AndErrorsKeepTheProgress()
    {
        var sys = new ScriptedSyscalls();
        sys.Writes.Enqueue((6, 0));
        sys.Writes.Enqueue((0, 0));
        using var s = Scripted(sys);
        var e = Assert.Throws<VfioException>(() => s.WriteAll(Pattern(10)));
        Assert.Equal(Libc.EIO, e.Errno);
        Assert.Contains("6 of 10 bytes written", e.Message);

        var sys2 = new ScriptedSyscalls();
        sys2.Writes.Enqueue((-1, Libc.ENODEV));
        using var s2 = Scripted(sys2);
        var e2 = Assert.Throws<VfioException>(() => s2.WriteAll(Pattern(10)));
        Assert.Equal(Libc.ENODEV, e2.Errno);
    }

    [Fact]
    public void WriteAll_OfNothing_MakesNoCall()
    {
        var sys = new ScriptedSyscalls();
        using var s = Scripted(sys);
        Assert.Equal(0, s.WriteAll([]));
        Assert.Equal(0, sys.WriteCalls);
    }

    [Fact]
    public void A_disposed_stream_refuses_reads_and_writes()
    {
        var (r, w) = Pipe();
        var reader = new MigrationDataStream(r, "pipe-reader");
        var writer = new MigrationDataStream(w, "pipe-writer");
        reader.Dispose();
        writer.Dispose();
        Assert.Throws<ObjectDisposedException>(() => writer.WriteAll(Pattern(10)));
        Assert.Throws<ObjectDisposedException>(() => reader.Read(new byte[8]));
    }
}
