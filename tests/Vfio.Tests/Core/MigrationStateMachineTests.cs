using S = Vfio.Core.MigrationState;

namespace Vfio.Tests.Core;

/// <summary>
/// Checks the state model against an independent oracle: the arcs written out again from the uAPI text,
/// and a breadth-first search for the shortest paths that keep saving states out of the interior.
/// </summary>
public class MigrationStateMachineTests
{
    private static readonly S[] Saving = [S.StopCopy, S.PreCopy, S.PreCopyP2P];

    /// <summary>The arcs that &lt;linux/vfio.h&gt; documents for each flag set, as a plain list.</summary>
    private static HashSet<(S, S)> OracleArcs(MigrationFlags flags)
    {
        var arcs = new HashSet<(S, S)>();
        if ((flags & MigrationFlags.StopCopy) == 0)
            return arcs;
        bool p2p = (flags & MigrationFlags.P2P) != 0, pre = (flags & MigrationFlags.PreCopy) != 0;
        arcs.UnionWith([(S.Stop, S.Resuming), (S.Resuming, S.Stop), (S.Stop, S.StopCopy), (S.StopCopy, S.Stop)]);
        if (p2p)
            arcs.UnionWith([(S.Running, S.RunningP2P), (S.RunningP2P, S.Running), (S.RunningP2P, S.Stop), (S.Stop, S.RunningP2P)]);
        else
            arcs.UnionWith([(S.Running, S.Stop), (S.Stop, S.Running)]);
        if (pre && !p2p)
            arcs.UnionWith([(S.Running, S.PreCopy), (S.PreCopy, S.Running), (S.PreCopy, S.StopCopy)]);
        if (pre && p2p)
            arcs.UnionWith([(S.Running, S.PreCopy), (S.PreCopy, S.Running), (S.RunningP2P, S.PreCopyP2P), (S.PreCopyP2P, S.RunningP2P),
                (S.PreCopy, S.PreCopyP2P), (S.PreCopyP2P, S.PreCopy), (S.PreCopyP2P, S.StopCopy)]);
        return arcs;
    }

    /// <summary>
    /// All shortest paths from -> to over the arcs whose interior states are not saving states (unless both
    /// ends are saving states: the session then continues inside the saving group); null if the kernel refuses.
    /// </summary>
    private static List<List<S>>? OraclePaths(S from, S to, MigrationFlags flags)
    {
        var arcs = OracleArcs(flags);
        var states = arcs.SelectMany(a => new[] { a.Item1, a.Item2 }).ToHashSet();
        if (from == S.Error || to == S.Error || !states.Contains(from) || !states.Contains(to))
            return null;
        if (from == S.StopCopy && (to == S.PreCopy || to == S.PreCopyP2P))
            return null; // "These arcs are not permitted and return error" (vfio.h)
        if (from == to)
            return [[]];
        bool savingToSaving = Saving.Contains(from) && Saving.Contains(to);
        // BFS by layers, keeping every shortest path.
        var frontier = new List<List<S>> { new() { from } };
        var seen = new HashSet<S> { from };
        while (frontier.Count > 0)
        {
            var next = new List<List<S>>();
            var reachedThisLayer = new HashSet<S>();
            foreach (var path in frontier)
            {
                var last = path[^1];
                if (last != from && Saving.Contains(last) && !savingToSaving)
                    continue; // a saving state may not be an interior state
                foreach (var (a, b) in arcs)
                {
                    if (a != last || seen.Contains(b))
                        continue;
                    next.Add([.. path, b]);
                    reachedThisLayer.Add(b);
                }
            }
            var done = next.Where(p => p[^1] == to).Select(p => p.Skip(1).ToList()).ToList();
            if (done.Count > 0)
                return done;
            seen.UnionWith(reachedThisLayer);
            frontier = next;
        }
        return null;
    }

    [Fact]
    public void Arcs_MatchTheUapiArcList_ForEveryFlagCombination()
    {
        foreach (var flags in MigrationStateMachine.AllFlagCombinations)
        {
            var model = MigrationStateMachine.Arcs(flags).ToHashSet();
            var oracle = OracleArcs(flags);
            Assert.True(oracle.SetEquals(model),
                $"flags {MigrationStateMachine.Describe(flags)}: model arcs {string.Join(",", model)} != oracle {string.Join(",", oracle)}");
        }
    }

    [Fact]
    public void EveryTriple_MatchesTheBreadthFirstSearchOracle()
    {
        int checkedTriples = 0, valid = 0;
        foreach (var flags in MigrationStateMachine.AllFlagCombinations)
        {
            foreach (var from in MigrationStateMachine.AllStates)
            {
                foreach (var to in MigrationStateMachine.AllStates)
                {
                    checkedTriples++;
                    var oracle = OraclePaths(from, to, flags);
                    bool ok = MigrationStateMachine.TryGetPath(from, to, flags, out var path);
                    var label =
                        $"{MigrationStateMachine.Name(from)} -> {MigrationStateMachine.Name(to)} with {MigrationStateMachine.Describe(flags)}";
                    Assert.True(ok == (oracle is not null), $"{label}: model says valid={ok}, oracle says valid={oracle is not null}");
                    Assert.Equal(ok, MigrationStateMachine.IsValidTarget(from, to, flags));
                    if (oracle is null)
                        continue;
                    valid++;
                    // The kernel's choice is deterministic; the oracle must find exactly that one path.
                    Assert.True(oracle.Count == 1, $"{label}: the oracle finds {oracle.Count} shortest paths");
                    Assert.True(oracle[0].SequenceEqual(path),
                        $"{label}: model path [{string.Join(",", path)}] != oracle [{string.Join(",", oracle[0])}]");
                    // Every step is an implemented arc.
                    var prev = from;
                    foreach (var step in path)
                    {
                        Assert.True(MigrationStateMachine.IsArc(prev, step, flags), $"{label}: {prev}->{step} is not an arc");
                        prev = step;
                    }
                }
            }
        }
        Assert.Equal(8 * 8 * 8, checkedTriples);
        Assert.True(valid > 100, $"only {valid} valid triples");
    }

    [Theory]
    [InlineData(S.Running, S.Stop, MigrationFlags.StopCopy | MigrationFlags.P2P, new[] { S.RunningP2P, S.Stop })]
    [InlineData(S.Running, S.Stop, MigrationFlags.StopCopy, new[] { S.Stop })]
    [InlineData(S.Running, S.StopCopy, MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy,
        new[] { S.RunningP2P, S.Stop, S.StopCopy })]
    [InlineData(S.PreCopy, S.StopCopy, MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy, new[] { S.PreCopyP2P, S.StopCopy })]
    [InlineData(S.PreCopy, S.StopCopy, MigrationFlags.StopCopy | MigrationFlags.PreCopy, new[] { S.StopCopy })]
    [InlineData(S.PreCopy, S.Stop, MigrationFlags.StopCopy | MigrationFlags.PreCopy, new[] { S.Running, S.Stop })]
    [InlineData(S.Resuming, S.Running, MigrationFlags.StopCopy | MigrationFlags.P2P, new[] { S.Stop, S.RunningP2P, S.Running })]
    [InlineData(S.StopCopy, S.Running, MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy,
        new[] { S.Stop, S.RunningP2P, S.Running })]
    [InlineData(S.Stop, S.PreCopy, MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy,
        new[] { S.RunningP2P, S.Running, S.PreCopy })]
    public void KnownCombinationTransitions(S from, S to, MigrationFlags flags, S[] expected) =>
        Assert.Equal(expected, MigrationStateMachine.GetPath(from, to, flags));

    [Fact]
    public void RefusedRequests()
    {
        var all = MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy;
        Assert.False(MigrationStateMachine.IsValidTarget(S.StopCopy, S.PreCopy, all));
        Assert.False(MigrationStateMachine.IsValidTarget(S.StopCopy, S.PreCopyP2P, all));
        Assert.False(MigrationStateMachine.IsValidTarget(S.Running, S.Error, all));
        Assert.False(MigrationStateMachine.IsValidTarget(S.Error, S.Running, all));
        Assert.False(MigrationStateMachine.IsValidTarget(S.Running, S.RunningP2P, MigrationFlags.StopCopy));
        Assert.False(MigrationStateMachine.IsValidTarget(S.Running, S.PreCopy, MigrationFlags.StopCopy | MigrationFlags.P2P));
        Assert.False(MigrationStateMachine.IsValidTarget(S.Running, S.Stop, MigrationFlags.P2P)); // no STOP_COPY: nothing
        Assert.True(MigrationStateMachine.IsValidTarget(S.Running, S.Running, MigrationFlags.StopCopy));
        Assert.Empty(MigrationStateMachine.GetPath(S.Stop, S.Stop, MigrationFlags.StopCopy));
        var e = Assert.Throws<ArgumentException>(() => MigrationStateMachine.GetPath(S.StopCopy, S.PreCopy, all));
        Assert.Contains("STOP_COPY -> PRE_COPY", e.Message);
    }

    [Fact]
    public void DataFd_IsReturnedOnlyWhenTheLastStepOpensASession()
    {
        var all = MigrationFlags.StopCopy | MigrationFlags.P2P | MigrationFlags.PreCopy;
        Assert.True(MigrationStateMachine.ReturnsDataFd(S.Running, S.StopCopy, all));
        Assert.True(MigrationStateMachine.ReturnsDataFd(S.Stop, S.Resuming, all));
        Assert.True(MigrationStateMachine.ReturnsDataFd(S.Running, S.Resuming, all));
        Assert.True(MigrationStateMachine.ReturnsDataFd(S.Running, S.PreCopy, all));
        Assert.True(MigrationStateMachine.ReturnsDataFd(S.Running, S.PreCopyP2P, all));
        Assert.True(MigrationStateMachine.ReturnsDataFd(S.Stop, S.PreCopy, all));
        Assert.False(MigrationStateMachine.ReturnsDataFd(S.PreCopy, S.StopCopy, all)); // same fd continues
        Assert.False(MigrationStateMachine.ReturnsDataFd(S.PreCopy, S.PreCopyP2P, all));
        Assert.False(MigrationStateMachine.ReturnsDataFd(S.StopCopy, S.Stop, all));
        Assert.False(MigrationStateMachine.ReturnsDataFd(S.Running, S.RunningP2P, all));
        Assert.False(MigrationStateMachine.ReturnsDataFd(S.Running, S.Running, all));
    }

    [Fact]
    public void NamesAndParsing()
    {
        foreach (var s in MigrationStateMachine.AllStates)
        {
            Assert.True(MigrationStateMachine.TryParse(MigrationStateMachine.Name(s), out var parsed));
            Assert.Equal(s, parsed);
            Assert.True(MigrationStateMachine.TryParse(s.ToString(), out parsed));
            Assert.Equal(s, parsed);
        }
        Assert.True(MigrationStateMachine.TryParse("stop-copy", out var sc));
        Assert.Equal(S.StopCopy, sc);
        Assert.False(MigrationStateMachine.TryParse("SAVING", out _));
        Assert.Equal("STOP_COPY|P2P|PRE_COPY", MigrationStateMachine.Describe((MigrationFlags)7));
        Assert.Equal("none", MigrationStateMachine.Describe(MigrationFlags.None));
    }
}
