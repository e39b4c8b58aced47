using System.Net;
using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>
/// The two hard rules at every moment of the exchange, stop-copy and live: the main channel is lost (as a failed link or a killed peer
/// would lose it) before or after each message, and afterwards there is never more than one running copy of a device,
/// and its state is never lost. docs/protocol.md section 6 gives each side's outcome for each moment.
/// </summary>
public class CommitPointTests
{
    private static readonly (MessageType Type, bool ToDestination, bool Deliver, MigrationOutcome[] Source, MigrationOutcome[] Destination)[]
        StopCopyMoments =
    [
        // message lost or delivered-then-cut, direction, what the source may end with, what the destination ends with
        (MessageType.DeviceList, true, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        (MessageType.Accept, false, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        (MessageType.Switchover, true, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        (MessageType.Credit, false, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        (MessageType.DeviceDone, true, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        (MessageType.DeviceResult, false, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        (MessageType.Result, false, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack]),
        // The source read the Result: it may notice the loss before it commits (and resume) or after (and not know).
        (MessageType.Result, false, true, [MigrationOutcome.RolledBack, MigrationOutcome.Unknown], [MigrationOutcome.RolledBack]),
        (MessageType.Commit, true, false, [MigrationOutcome.Unknown], [MigrationOutcome.RolledBack]),
        (MessageType.Commit, true, true, [MigrationOutcome.Unknown], [MigrationOutcome.Migrated]),
        (MessageType.Running, false, false, [MigrationOutcome.Unknown], [MigrationOutcome.Migrated]),
        (MessageType.Running, false, true, [MigrationOutcome.Migrated], [MigrationOutcome.Migrated]),
    ];

    /// <summary>Every moment of a stop-copy run; live, the same moments and the live phase's own messages.</summary>
    public static TheoryData<MessageType, bool, bool, MigrationOutcome[], MigrationOutcome[], bool> Moments
    {
        get
        {
            var data = new TheoryData<MessageType, bool, bool, MigrationOutcome[], MigrationOutcome[], bool>();
            foreach (bool live in new[] { false, true })
                foreach (var m in StopCopyMoments)
                    data.Add(m.Type, m.ToDestination, m.Deliver, m.Source, m.Destination, live);
            data.Add(MessageType.PrecopyMark, true, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack], true);
            data.Add(MessageType.PrecopyAck, false, false, [MigrationOutcome.RolledBack], [MigrationOutcome.RolledBack], true);
            return data;
        }
    }

    [Theory]
    [MemberData(nameof(Moments))]
    public void Losing_the_main_channel_at_any_message_keeps_exactly_one_copy(MessageType type, bool toDestination, bool deliver,
        MigrationOutcome[] source, MigrationOutcome[] destination, bool live)
    {
        var (src, dst) = TestDevices.Pairs(2);
        var options = TestDevices.Options(2) with { Timeout = TimeSpan.FromSeconds(3) };
        if (live) options = options with { Precopy = PrecopyMode.On, DowntimeLimit = TimeSpan.FromSeconds(5) };
        using var listener = Loopback.Listen(new IPEndPoint(IPAddress.Loopback, 0), 16);
        using var proxy = new FaultProxy((IPEndPoint)listener.LocalEndPoint!) { CutMain = (type, toDestination, deliver) };
        RunReport? dreport = null;
        var receiver = new MigrationDestination(dst, options with { AcceptTimeout = TimeSpan.FromSeconds(10) });
        var t = new Thread(() => dreport = receiver.Run(listener, TestContext.Current.CancellationToken)) { IsBackground = true };
        t.Start();
        var sreport = new MigrationSource(src, options).Run(proxy.Endpoint, TestContext.Current.CancellationToken);
        Assert.True(t.Join(TimeSpan.FromSeconds(20)), "the destination did not end");
        string what = $"{(live ? "live, " : "")}{type} {(deliver ? "delivered, then cut" : "lost")}: source {sreport.Outcome} ({sreport.Error}), "
            + $"destination {dreport!.Outcome} ({dreport.Error})";
        Assert.True(proxy.Struck.IsSet, $"the run never sent {type}: {what}");
        // Live, every moment after the Accept comes once the devices are in PRE_COPY.
        Assert.Equal(live && type is not (MessageType.DeviceList or MessageType.Accept), sreport.PrecopyStartUs > 0);

        Assert.True(source.Contains(sreport.Outcome), what);
        Assert.True(destination.Contains(dreport.Outcome), what);
        var migrated = src.Select(s => s.StateDigest()).ToArray();
        for (int i = 0; i < src.Length; i++)
        {
            bool sourceRuns = src[i].GetState() == MigrationState.Running;
            bool destinationRunsIt = dst[i].GetState() == MigrationState.Running && dst[i].StateDigest() == migrated[i];
            Assert.False(sourceRuns && destinationRunsIt, $"two running copies of device {i}: {what}");
            switch (sreport.Outcome)
            {
                case MigrationOutcome.Migrated or MigrationOutcome.RolledBack:
                    Assert.True(sourceRuns ^ destinationRunsIt, $"device {i} runs nowhere: {what}");
                    break;
                case MigrationOutcome.Unknown:
                    // Stopped with its state, for the operator: resume it only where the destination did not take over.
                    Assert.Equal(MigrationState.Stop, src[i].GetState());
                    if (!destinationRunsIt) src[i].SetState(MigrationState.Running);
                    Assert.True(src[i].GetState() == MigrationState.Running ^ destinationRunsIt, what);
                    break;
            }
            if (dreport.Outcome == MigrationOutcome.RolledBack)
                Assert.Equal(new SimulatedDevice(dst[i].Name, dst[i].Options).StateDigest(), dst[i].StateDigest());
        }
    }

    [Fact]
    public void Loopback_resolves_an_unknown_outcome_from_the_destination_it_can_see()
    {
        var (src, dst) = TestDevices.Pairs(1);
        var options = TestDevices.Options(1) with { Timeout = TimeSpan.FromSeconds(3) };
        // The Commit is lost: the source cannot know, the destination resets; in one process the sources run again.
        FaultProxy? proxy = null;
        var report = Loopback.Run(src, dst, options, null, null,
            ep => (proxy = new FaultProxy(ep) { CutMain = (MessageType.Commit, true, false) }).Endpoint, TestContext.Current.CancellationToken);
        proxy!.Dispose();
        Assert.True(proxy.Struck.IsSet);
        Assert.Equal(MigrationOutcome.RolledBack, report.Outcome);
        Assert.Equal(MigrationState.Running, src[0].GetState());
    }
}
