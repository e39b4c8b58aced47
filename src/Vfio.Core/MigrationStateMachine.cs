namespace Vfio.Core;

/// <summary>
/// The kernel's VFIO migration state machine (migration protocol v2) for a device with given
/// <see cref="MigrationFlags"/>: which states exist, which single arcs a driver implements, and which
/// path the kernel walks for a combination transition (a SET whose target is not one arc away).
/// </summary>
/// <remarks>
/// Semantics follow the kernel's <c>vfio_mig_get_next_state</c>: a request is refused (EINVAL) when the
/// current or the target state is ERROR or is not offered by the flags (a device without STOP_COPY offers
/// nothing); STOP_COPY to PRE_COPY or PRE_COPY_P2P is refused; otherwise the kernel walks the shortest
/// path over the implemented arcs that never passes through a saving state (PRE_COPY, PRE_COPY_P2P,
/// STOP_COPY) in the middle, except that a transition from one saving state to another stays inside the
/// saving group (its data session continues). With both P2P and PRE_COPY the driver implements PRE_COPY ->
/// PRE_COPY_P2P -> STOP_COPY instead of a direct PRE_COPY -> STOP_COPY arc (the kernel never takes one).
/// </remarks>
public static class MigrationStateMachine
{
    /// <summary>Every state of enum vfio_device_mig_state, in numeric order.</summary>
    public static IReadOnlyList<MigrationState> AllStates { get; } = Enum.GetValues<MigrationState>().OrderBy(s => (uint)s).ToArray();

    /// <summary>Every combination of the three migration flags (0 to 7).</summary>
    public static IReadOnlyList<MigrationFlags> AllFlagCombinations { get; } =
        Enumerable.Range(0, 8).Select(i => (MigrationFlags)(ulong)i).ToArray();

    /// <summary>A state where the device produces migration data (a save session is open).</summary>
    public static bool IsSaving(MigrationState state) =>
        state is MigrationState.StopCopy or MigrationState.PreCopy or MigrationState.PreCopyP2P;

    /// <summary>A state with an open data session (saving or RESUMING): the data fd works only here.</summary>
    public static bool HasDataSession(MigrationState state) => IsSaving(state) || state == MigrationState.Resuming;

    /// <summary>The device runs its workload (may issue DMA and interrupts): RUNNING and PRE_COPY.</summary>
    public static bool IsRunning(MigrationState state) => state is MigrationState.Running or MigrationState.PreCopy;

    /// <summary>Whether a device with these flags offers the state at all (ERROR is never offered as a target).</summary>
    public static bool IsSupported(MigrationState state, MigrationFlags flags)
    {
        if (!flags.HasFlag(MigrationFlags.StopCopy))
            return false;
        return state switch
        {
            MigrationState.Stop or MigrationState.Running or MigrationState.StopCopy or MigrationState.Resuming => true,
            MigrationState.RunningP2P => flags.HasFlag(MigrationFlags.P2P),
            MigrationState.PreCopy => flags.HasFlag(MigrationFlags.PreCopy),
            MigrationState.PreCopyP2P => flags.HasFlag(MigrationFlags.PreCopy) && flags.HasFlag(MigrationFlags.P2P),
            _ => false,
        };
    }

    /// <summary>The single arcs (from, to) a driver with these flags implements.</summary>
    public static IReadOnlyList<(MigrationState From, MigrationState To)> Arcs(MigrationFlags flags)
    {
        var arcs = new List<(MigrationState, MigrationState)>();
        if (!flags.HasFlag(MigrationFlags.StopCopy))
            return arcs;
        bool p2p = flags.HasFlag(MigrationFlags.P2P), pre = flags.HasFlag(MigrationFlags.PreCopy);
        void Both(MigrationState a, MigrationState b) { arcs.Add((a, b)); arcs.Add((b, a)); }
        Both(MigrationState.Stop, MigrationState.Resuming);
        Both(MigrationState.Stop, MigrationState.StopCopy);
        if (p2p)
        {
            Both(MigrationState.Running, MigrationState.RunningP2P);
            Both(MigrationState.RunningP2P, MigrationState.Stop);
        }
        else
        {
            Both(MigrationState.Running, MigrationState.Stop);
        }
        if (pre)
        {
            Both(MigrationState.Running, MigrationState.PreCopy);
            if (p2p)
            {
                Both(MigrationState.RunningP2P, MigrationState.PreCopyP2P);
                Both(MigrationState.PreCopy, MigrationState.PreCopyP2P);
                arcs.Add((MigrationState.PreCopyP2P, MigrationState.StopCopy));
            }
            else
            {
                arcs.Add((MigrationState.PreCopy, MigrationState.StopCopy));
            }
        }
        return arcs;
    }

    /// <summary>Whether (from, to) is one arc the driver implements.</summary>
    public static bool IsArc(MigrationState from, MigrationState to, MigrationFlags flags) =>
        Arcs(flags).Contains((from, to));

    /// <summary>
    /// Whether the kernel accepts a SET of <paramref name="to"/> while the device is in <paramref name="from"/>
    /// (from == to is accepted and changes nothing).
    /// </summary>
    public static bool IsValidTarget(MigrationState from, MigrationState to, MigrationFlags flags) =>
        TryGetPath(from, to, flags, out _);

    /// <summary>
    /// The states the kernel steps through for SET <paramref name="to"/> from <paramref name="from"/>, excluding
    /// <paramref name="from"/> and ending with <paramref name="to"/> (empty when they are equal). False when
    /// the kernel refuses the request with EINVAL.
    /// </summary>
    public static bool TryGetPath(MigrationState from, MigrationState to, MigrationFlags flags, out IReadOnlyList<MigrationState> path)
    {
        path = [];
        if (!IsSupported(from, flags) || !IsSupported(to, flags))
            return false;
        if (from == MigrationState.StopCopy && to is MigrationState.PreCopy or MigrationState.PreCopyP2P)
            return false;
        var steps = new List<MigrationState>();
        var current = from;
        while (current != to)
        {
            // Take the next step of a device with every optional state, skipping states these flags lack.
            var next = FullNextStep(current, to);
            while (!IsSupported(next, flags))
                next = FullNextStep(next, to);
            steps.Add(next);
            current = next;
            if (steps.Count > AllStates.Count)
                throw new InvalidOperationException($"no path from {from} to {to} with {flags}: the state model loops");
        }
        path = steps;
        return true;
    }

    /// <summary>As <see cref="TryGetPath"/>, but throws <see cref="ArgumentException"/> for a refused request.</summary>
    public static IReadOnlyList<MigrationState> GetPath(MigrationState from, MigrationState to, MigrationFlags flags) =>
        TryGetPath(from, to, flags, out var path)
            ? path
            : throw new ArgumentException($"the kernel refuses {Name(from)} -> {Name(to)} for a device with flags {Describe(flags)}");

    /// <summary>Whether the single arc from -> to opens a new data session, i.e. the kernel returns a new data fd for it.</summary>
    public static bool OpensDataSession(MigrationState from, MigrationState to) => (from, to) switch
    {
        (MigrationState.Stop, MigrationState.StopCopy) => true,
        (MigrationState.Stop, MigrationState.Resuming) => true,
        (MigrationState.Running, MigrationState.PreCopy) => true,
        (MigrationState.RunningP2P, MigrationState.PreCopyP2P) => true,
        _ => false,
    };

    /// <summary>Whether SET from -> to returns a data fd: the last step of its path opens a session.</summary>
    public static bool ReturnsDataFd(MigrationState from, MigrationState to, MigrationFlags flags)
    {
        if (!TryGetPath(from, to, flags, out var path) || path.Count == 0)
            return false;
        var beforeLast = path.Count == 1 ? from : path[^2];
        return OpensDataSession(beforeLast, path[^1]);
    }

    /// <summary>The uAPI spelling of a state, e.g. RUNNING_P2P.</summary>
    public static string Name(MigrationState state) => state switch
    {
        MigrationState.Error => "ERROR",
        MigrationState.Stop => "STOP",
        MigrationState.Running => "RUNNING",
        MigrationState.StopCopy => "STOP_COPY",
        MigrationState.Resuming => "RESUMING",
        MigrationState.RunningP2P => "RUNNING_P2P",
        MigrationState.PreCopy => "PRE_COPY",
        MigrationState.PreCopyP2P => "PRE_COPY_P2P",
        _ => $"state {(uint)state}",
    };

    /// <summary>Parses a uAPI spelling (STOP_COPY, stop-copy) or the enum name (StopCopy).</summary>
    public static bool TryParse(string text, out MigrationState state)
    {
        var key = text.Trim().Replace("-", "_").ToUpperInvariant();
        foreach (var s in AllStates)
        {
            if (Name(s) == key || string.Equals(s.ToString(), key, StringComparison.OrdinalIgnoreCase))
            {
                state = s;
                return true;
            }
        }
        state = MigrationState.Error;
        return false;
    }

    /// <summary>"STOP_COPY|P2P|PRE_COPY", or "none".</summary>
    public static string Describe(MigrationFlags flags)
    {
        var parts = new List<string>();
        if (flags.HasFlag(MigrationFlags.StopCopy)) parts.Add("STOP_COPY");
        if (flags.HasFlag(MigrationFlags.P2P)) parts.Add("P2P");
        if (flags.HasFlag(MigrationFlags.PreCopy)) parts.Add("PRE_COPY");
        var unknown = (ulong)flags & ~7UL;
        if (unknown != 0) parts.Add($"0x{unknown:x}");
        return parts.Count == 0 ? "none" : string.Join('|', parts);
    }

    /// <summary>
    /// The next step toward <paramref name="to"/> for a device offering every optional state: the stops on the
    /// way are RUNNING_P2P and STOP (quiescing before stopping), RUNNING (leaving pre-copy without saving),
    /// and PRE_COPY_P2P only when going on to STOP_COPY or to PRE_COPY_P2P itself.
    /// </summary>
    private static MigrationState FullNextStep(MigrationState from, MigrationState to)
    {
        if (from == to)
            return to;
        return from switch
        {
            MigrationState.Stop => to is MigrationState.StopCopy or MigrationState.Resuming ? to : MigrationState.RunningP2P,
            MigrationState.Resuming or MigrationState.StopCopy => MigrationState.Stop,
            MigrationState.RunningP2P => to switch
            {
                MigrationState.Running or MigrationState.PreCopy => MigrationState.Running,
                MigrationState.PreCopyP2P => MigrationState.PreCopyP2P,
                _ => MigrationState.Stop,
            },
            MigrationState.Running => to == MigrationState.PreCopy ? MigrationState.PreCopy : MigrationState.RunningP2P,
            MigrationState.PreCopy => to is MigrationState.PreCopyP2P or MigrationState.StopCopy
                ? MigrationState.PreCopyP2P
                : MigrationState.Running,
            MigrationState.PreCopyP2P => to is MigrationState.PreCopy or MigrationState.StopCopy ? to : MigrationState.RunningP2P,
            _ => throw new ArgumentOutOfRangeException(nameof(from), from, "no step out of this state"),
        };
    }
}
