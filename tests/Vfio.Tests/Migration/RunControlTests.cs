using Vfio.Migration;

namespace Vfio.Tests.Migration;

/// <summary>The destination's commit and a failure (a signal's cancellation among them) exclude each other.</summary>
public class RunControlTests
{
    [Fact]
    public void A_commit_taken_first_keeps_a_later_failure_from_telling_the_peer()
    {
        var told = new List<RunFailure>();
        using var cancel = new CancellationTokenSource();
        using var ctl = new RunControl(cancel.Token) { BeforeAbort = told.Add };
        Assert.True(ctl.TryCommit());
        cancel.Cancel();
        Assert.Equal(FailureOrigin.Cancelled, ctl.Failure!.Origin);
        Assert.Empty(told); // an Error now would make the source resume devices that run here
    }

    [Fact]
    public void A_failure_first_refuses_the_commit_and_tells_the_peer()
    {
        var told = new List<RunFailure>();
        using var cancel = new CancellationTokenSource();
        using var ctl = new RunControl(cancel.Token) { BeforeAbort = told.Add };
        cancel.Cancel();
        Assert.False(ctl.TryCommit());
        Assert.Equal([RunFailure.Cancelled], told);
    }
}
