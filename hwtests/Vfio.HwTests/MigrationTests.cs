using System.Buffers.Binary;
using Vfio.Interop;
using S = Vfio.Core.MigrationState;

namespace Vfio.HwTests;

/// <summary>The migration uAPI against the kernel: state arcs, combination transitions, data fds, save/resume.</summary>
public class MigrationTests
{
    /// <summary>Every valid (from, to) pair: the kernel reaches the target and returns a data fd exactly when the model says.</summary>
    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void EveryValidTransition_ReachesItsTarget(string device)
    {
        HwEnv.Require(device);
        using var d = new OpenDevice(device);
        bool real = !HwEnv.IsSim(device);
        int done = 0;
        foreach (var from in MigrationStateMachine.AllStates.Where(s => MigrationStateMachine.IsSupported(s, d.Flags)))
        {
            // Leaving RESUMING without a stream asks a real device to load nothing: keep that to the simulator.
            if (real && from == S.Resuming)
                continue;
            foreach (var to in MigrationStateMachine.AllStates.Where(t => MigrationStateMachine.IsValidTarget(from, t, d.Flags)))
            {
                d.Restore();
                d.Go(from)?.Dispose(); // may pass through a data session; its fd is not needed
                Assert.Equal(from, d.State);
                using var stream = d.Go(to);
                done++;
            }
        }
        d.Restore();
        Assert.True(done >= 16, $"only {done} transitions tried");
    }

    /// <summary>Every refused (from, to) pair fails with EINVAL and leaves the device where it was.</summary>
    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void EveryInvalidTransition_IsRefusedWithEinval(string device)
    {
        HwEnv.Require(device);
        using var d = new OpenDevice(device);
        bool real = !HwEnv.IsSim(device);
        int refused = 0;
        var targets = MigrationStateMachine.AllStates.Append((S)VfioUapi.VFIO_DEVICE_STATE_NR).ToArray();
        foreach (var from in MigrationStateMachine.AllStates.Where(s => MigrationStateMachine.IsSupported(s, d.Flags)))
        {
            if (real && from == S.Resuming)
                continue;
            foreach (var to in targets.Where(t => !MigrationStateMachine.IsValidTarget(from, t, d.Flags)))
            {
                d.Restore();
                d.Go(from)?.Dispose();
                var e = Assert.Throws<VfioException>(() => d.Device.SetMigrationState(to)?.Dispose());
                Assert.True(e.Errno == Libc.EINVAL,
                    $"{device}: {MigrationStateMachine.Name(from)} -> {MigrationStateMachine.Name(to)}: {e.Message}");
                Assert.Equal(from, d.State);
                refused++;
            }
        }
        d.Restore();
        Assert.True(refused >= 8, $"only {refused} refusals tried");
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void DataFd_IsRefusedWithEnodev_AfterTheStateIsLeft(string device)
    {
        HwEnv.Require(device);
        using var d = new OpenDevice(device);
        var save = d.Go(S.StopCopy);
        Assert.NotNull(save);
        using (save)
        {
            var first = save!.Read(new byte[4096]);
            Assert.Equal(DataReadStatus.Data, first.Status);
            d.Go(S.Stop);
            var e = Assert.Throws<VfioException>(() => save.Read(new byte[4096]));
            Assert.Equal(Libc.ENODEV, e.Errno);
        }
        if (!HwEnv.IsSim(device))
            return; // leaving RESUMING without a stream is kept to the simulator
        var resume = d.Go(S.Resuming);
        Assert.NotNull(resume);
        using (resume)
        {
            d.Go(S.Stop);
            var e = Assert.Throws<VfioException>(() => resume!.WriteAll(new byte[16]));
            Assert.Equal(Libc.ENODEV, e.Errno);
        }
    }

    [Fact]
    public void SaveInStopCopy_ResumesIntoAnotherDevice()
    {
        var pair = HwEnv.RequireSeveral(2);
        using var src = new OpenDevice(pair[0]);
        using var dst = new OpenDevice(pair[1]);
        bool sim = HwEnv.IsSim(pair[0]);
        if (sim)
        {
            // Different contents on both sides, so equal digests afterwards mean the state moved.
            HwEnv.TryWriteSimAttribute(pair[0], "seed", "0x1111222233334444");
            HwEnv.TryWriteSimAttribute(pair[1], "seed", "0x5555666677778888");
            Assert.NotEqual(HwEnv.SimAttribute(pair[0], "digest"), HwEnv.SimAttribute(pair[1], "digest"));
        }

        byte[] data;
        string? sourceDigest;
        using (var save = src.Go(S.StopCopy))
        {
            Assert.NotNull(save);
            data = OpenDevice.ReadToEnd(save!);
            sourceDigest = HwEnv.SimAttribute(pair[0], "digest");
        }
        Assert.True(data.Length > 0);
        src.Go(S.Stop);

        using (var load = dst.Go(S.Resuming))
        {
            Assert.NotNull(load);
            int calls = load!.WriteAll(data);
            Assert.True(calls >= 1);
            dst.Go(S.Stop); // the kernel checks the stream is complete here
        }
        if (sim && sourceDigest is not null)
            Assert.Equal(sourceDigest, HwEnv.SimAttribute(pair[1], "digest"));
        dst.Go(S.Running);
        src.Go(S.Running);
    }

    [Fact]
    public void SeveralDevices_AreAllQuiescedToRunningP2P_BeforeAnyStops()
    {
        var names = HwEnv.RequireSeveral(Math.Max(2, Math.Min(4, HwEnv.SimDevices.Count >= 2 ? HwEnv.SimDevices.Count : HwEnv.RealDevices.Count)));
        var devices = names.Select(n => new OpenDevice(n)).ToList();
        try
        {
            if (devices.Any(d => !d.Flags.HasFlag(MigrationFlags.P2P)))
                Assert.Skip("a configured device lacks VFIO_MIGRATION_P2P");
            foreach (var d in devices)
                Assert.Null(d.Go(S.RunningP2P));
            Assert.All(devices, d => Assert.Equal(S.RunningP2P, d.State));
            foreach (var d in devices)
                Assert.Null(d.Go(S.Stop));
            var streams = devices.Select(d => d.Go(S.StopCopy)!).ToList();
            try
            {
                var sizes = streams.Select(OpenDevice.ReadToEnd).Select(b => b.Length).ToList();
                Assert.All(sizes, s => Assert.True(s > 0));
            }
            finally
            {
                streams.ForEach(s => s.Dispose());
            }
            foreach (var d in devices)
                d.Go(S.Running);
        }
        finally
        {
            devices.ForEach(d => d.Dispose());
        }
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void PreCopy_GivesPrecopyInfoAndDataSize_ThenStopCopyContinuesTheSameFd(string device)
    {
        HwEnv.Require(device);
        using var d = new OpenDevice(device);
        if (!d.Flags.HasFlag(MigrationFlags.PreCopy))
            Assert.Skip($"{device} does not offer PRE_COPY (flags {MigrationStateMachine.Describe(d.Flags)}; needs Linux 6.2+ and driver support)");
        using var stream = d.Go(S.PreCopy);
        Assert.NotNull(stream);
        var (initial, dirty) = stream!.GetPrecopyInfo();
        Assert.True(initial > 0 || dirty > 0, "PRE_COPY reports nothing to send");
        var early = OpenDevice.ReadAvailable(stream);
        Assert.True(early.Length > 0);
        var (initialAfter, _) = stream.GetPrecopyInfo();
        Assert.True(initialAfter < initial || initial == 0, $"initial bytes {initial} -> {initialAfter} after reading {early.Length}");
        if (d.Device.TryGetMigrationDataSize(out var size, out int errno))
            Assert.True(size > 0);
        else
            Assert.True(errno is Libc.ENOTTY or Libc.EINVAL, $"MIG_DATA_SIZE failed with {errno}");
        if (d.Flags.HasFlag(MigrationFlags.P2P))
        {
            Assert.Null(d.Go(S.PreCopyP2P));
            var (_, _) = stream.GetPrecopyInfo();
        }
        Assert.Null(d.Go(S.StopCopy)); // same fd keeps streaming
        var rest = OpenDevice.ReadToEnd(stream);
        Assert.True(early.Length + rest.Length > 0);
        d.Go(S.Stop);
        var e = Assert.Throws<VfioException>(() => stream.GetPrecopyInfo());
        Assert.True(e.Errno is Libc.ENODEV or Libc.EINVAL, e.Message);
    }

    [Fact]
    public void PreCopy_ThenStopCopy_ResumesIntoAnotherDevice()
    {
        var pair = HwEnv.RequireSeveral(2);
        using var src = new OpenDevice(pair[0]);
        using var dst = new OpenDevice(pair[1]);
        if (!src.Flags.HasFlag(MigrationFlags.PreCopy))
            Assert.Skip($"{pair[0]} does not offer PRE_COPY");
        var all = new MemoryStream();
        string? sourceDigest;
        using (var save = src.Go(S.PreCopy))
        {
            all.Write(OpenDevice.ReadAvailable(save!));
            src.Go(S.StopCopy);
            all.Write(OpenDevice.ReadToEnd(save!));
            sourceDigest = HwEnv.SimAttribute(pair[0], "digest");
        }
        src.Go(S.Stop);
        using (var load = dst.Go(S.Resuming))
        {
            load!.WriteAll(all.ToArray());
            dst.Go(S.Stop);
        }
        if (HwEnv.IsSim(pair[0]) && sourceDigest is not null)
            Assert.Equal(sourceDigest, HwEnv.SimAttribute(pair[1], "digest"));
    }

    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void MigDataSize_IsReportedWhereSupported(string device)
    {
        HwEnv.Require(device);
        using var d = new OpenDevice(device);
        if (!d.Device.SupportsFeature(VfioUapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE))
        {
            var e = Assert.Throws<VfioException>(() => d.Device.GetMigrationDataSize());
            Assert.Contains("MIG_DATA_SIZE", e.Message);
            Assert.Skip($"{device}: the kernel or driver has no MIG_DATA_SIZE");
        }
        d.Go(S.Stop);
        ulong estimate = d.Device.GetMigrationDataSize();
        Assert.True(estimate > 0);
        using var save = d.Go(S.StopCopy);
        var data = OpenDevice.ReadToEnd(save!);
        Assert.True(data.Length > 0);
    }

    /// <summary>A data record's header (the module's CHUNK, tag 3) promising 4 KiB of payload, then only 8 bytes of it.</summary>
    private static byte[] TruncatedStream()
    {
        var bytes = new byte[24];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 4096);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(12), 3);
        return bytes;
    }

    /// <summary>
    /// The module with strict_resume=1 refuses a truncated stream at RESUMING->STOP and leaves ERROR, the one way into
    /// ERROR it has; only a reset leads out. (Its default, as mlx5, accepts the stream: see the next test.)
    /// </summary>
    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void Reset_BringsTheDeviceOutOfError(string device)
    {
        HwEnv.Require(device);
        if (!HwEnv.IsSim(device))
            Assert.Skip($"{device}: a real device cannot be driven into ERROR on purpose (mlx5 drops a truncated record silently)");
        using var knobs = new SimKnobs();
        knobs.SetModuleParameter("strict_resume", "1");
        using var d = new OpenDevice(device);
        using (var load = d.Go(S.Resuming))
        {
            load!.WriteAll(TruncatedStream());
            var e = Assert.Throws<VfioException>(() => d.Device.SetMigrationState(S.Stop));
            Assert.Equal(Libc.EIO, e.Errno);
        }
        Assert.Equal(S.Error, d.State);
        var fromError = Assert.Throws<VfioException>(() => d.Device.SetMigrationState(S.Running));
        Assert.Equal(Libc.EINVAL, fromError.Errno);
        Assert.Contains("now in ERROR", fromError.Message);
        d.Device.Reset();
        Assert.Equal(S.Running, d.State);
    }

    /// <summary>
    /// As mlx5, the module by default (strict_resume=0) leaves RESUMING after a truncated stream without complaint: the
    /// incomplete last record is dropped, and only the writer, which knows how many bytes it meant to write, can tell.
    /// </summary>
    [Theory]
    [MemberData(nameof(HwEnv.Devices), MemberType = typeof(HwEnv))]
    public void TruncatedStream_IsAcceptedAtStop_AsOnMlx5(string device)
    {
        HwEnv.Require(device);
        if (!HwEnv.IsSim(device))
            Assert.Skip($"{device}: a truncated stream is not written into a real device on purpose");
        using var knobs = new SimKnobs();
        knobs.SetModuleParameter("strict_resume", "0");
        using var d = new OpenDevice(device);
        using (var load = d.Go(S.Resuming))
        {
            load!.WriteAll(TruncatedStream());
            Assert.Null(d.Go(S.Stop));
        }
        Assert.Equal(S.Stop, d.State);
        d.Go(S.Running);
    }
}
